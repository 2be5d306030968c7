"""package.xml declares what the runtime code imports (rosdep keys), and nothing ROS it does not.

The node, its services, the launch files and the bag player run on a robot from `rosdep install`;
a ROS package imported but not declared breaks that install, one declared but never imported
drags in what nobody needs.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = ['mobius_ros/ros', 'mobius_ros/runtime', 'mobius_ros/common', 'launch']
# Python modules of the runtime and the rosdep key that installs each.
PYTHON_KEYS = {
    'numpy': 'python3-numpy',
    'cv2': 'python3-opencv',
    'yaml': 'python3-yaml',
    'regex': 'python3-regex',
    'tqdm': 'python3-tqdm',
    'onnxruntime': 'python3-onnxruntime-pip',
    'rosbags': 'python3-rosbags-pip',
}
ROS_MODULES = {'rclpy', 'launch', 'launch_ros', 'ament_index_python'}
# Messages are also reached by name: importlib ('vision_msgs.msg') and typestores and factories
# ('std_msgs/msg/Header').
BY_NAME = re.compile(r'^([a-z][a-z0-9_]*)[./](?:msg|srv)(?:[./][A-Za-z0-9]+)?$')


def _is_ros(module: str) -> bool:
    return module in ROS_MODULES or module.endswith(('_msgs', '_srvs', '_interfaces'))


def _imported() -> set[str]:
    modules: set[str] = set()
    for folder in RUNTIME:
        for path in (REPO / folder).rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split('.')[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split('.')[0])
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    match = BY_NAME.match(node.value)
                    if match:
                        modules.add(match.group(1))
    return modules


def _exec_depends() -> set[str]:
    root = ET.parse(REPO / 'package.xml').getroot()
    return {e.text.strip() for e in root.iter() if e.tag in ('exec_depend', 'depend') and e.text}


def test_every_ros_package_and_python_module_imported_is_declared() -> None:
    imported = _imported()
    wanted = {m for m in imported if _is_ros(m)} | {
        key for module, key in PYTHON_KEYS.items() if module in imported
    }
    assert wanted - _exec_depends() == set()


def test_no_ros_package_is_declared_that_nothing_imports() -> None:
    declared_ros = {d for d in _exec_depends() if not d.startswith('python3-')}
    assert declared_ros - _imported() == set()
