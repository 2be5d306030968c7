"""Sub-commands of `mobius`; see `mobius_ros/cli.py`."""
