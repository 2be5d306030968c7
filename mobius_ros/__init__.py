"""mobius_ros: open-vocabulary instance segmentation (MOBIUS) for ROS 2."""

__version__ = '0.1.0'
