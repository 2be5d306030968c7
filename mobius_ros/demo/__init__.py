"""`mobius demo`: the node on a live ROS 2 graph with a simulated camera and a service client.

`camera` makes the frames (synthetic test scenes and bundled photos, no rclpy), `launcher`
starts and stops the node process, `client` is the rclpy side (camera publisher, output
subscriptions, service calls), `recorder` writes the session's mcap, `report` turns output
messages into table lines and overlays, `steps` plays frames and asks the node, and `session`
runs the whole script and writes `summary.json`.
"""
