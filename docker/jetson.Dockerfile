# Jetson runtime image (JetPack 6 / L4T r36, TensorRT 10): the node on TensorRT, no torch.
#
#   docker build -f docker/jetson.Dockerfile -t mobius_ros:jetson .          # on the Jetson
#   docker run --rm -it --runtime nvidia --network host \
#       -v ~/.cache/mobius_ros:/root/.cache/mobius_ros \
#       -v /path/to/export:/models/mobius:ro \
#       mobius_ros:jetson ros2 launch mobius_ros mobius.launch.py preset:=orin_nano \
#           image_topic:=/camera/image_raw params_file:=/models/mobius/params.yaml
#
# The model comes as an export folder (`mobius export` on any machine: ONNX graphs + model.json);
# the node builds TensorRT engines from it on first start into the mounted cache (engine_dir), with
# sidecars that are checked on every later start. Mount that cache so engines survive restarts.
#
# JetPack 6 is Ubuntu 22.04, for which ROS 2 Jazzy has no apt packages: the base is a Jazzy built
# from source for L4T (jetson-containers). Any L4T r36 image with ROS 2 Jazzy (or Humble, which
# has the same vision_msgs 4.x) in /opt/ros works as BASE.
ARG BASE=dustynv/ros:jazzy-ros-base-l4t-r36.4.0
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
ARG VISION_MSGS_TAG=4.1.1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# TensorRT's Python bindings come with JetPack (python3-libnvinfer); pycuda compiles against the
# CUDA toolkit in the image. No torch, no onnxruntime: the runtime is numpy + OpenCV + TensorRT.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-numpy python3-yaml python3-libnvinfer git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c 'import tensorrt; print("TensorRT", tensorrt.__version__)'
RUN pip3 install --no-cache-dir 'pycuda>=2022.2' 'tqdm>=4.65' \
    && python3 -c 'import cv2' 2>/dev/null || pip3 install --no-cache-dir opencv-python-headless

WORKDIR /ws
# vision_msgs from source when the base lacks it (source builds of ROS often do).
RUN source /opt/ros/${ROS_DISTRO}/install/setup.bash 2>/dev/null || source /opt/ros/${ROS_DISTRO}/setup.bash; \
    if ! ros2 pkg prefix vision_msgs >/dev/null 2>&1; then \
        git clone --depth 1 --branch ${VISION_MSGS_TAG} \
            https://github.com/ros-perception/vision_msgs.git src/vision_msgs; \
    fi
COPY . src/mobius_ros
RUN source /opt/ros/${ROS_DISTRO}/install/setup.bash 2>/dev/null || source /opt/ros/${ROS_DISTRO}/setup.bash; \
    colcon build --base-paths src --packages-up-to mobius_ros mobius_ros_msgs \
        --cmake-args -DBUILD_TESTING=OFF \
    && rm -rf build log

ENV HF_HUB_OFFLINE=1
COPY docker/entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
CMD ["ros2", "launch", "mobius_ros", "mobius.launch.py", "preset:=orin_nano"]
