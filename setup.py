"""ament_python package vla_bringup; its Python lives under src/vla_bringup."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vla_bringup"

# One console script per node (ros2 launch and the embedded launcher start these by name) plus
# the user-facing tools.
NODES = {
    "sim": "vla_bringup.nodes.sim_node:main",
    "perception": "vla_bringup.nodes.perception_node:main",
    "instruction": "vla_bringup.nodes.instruction_node:main",
    "policy": "vla_bringup.nodes.policy_node:main",
    "skill_controller": "vla_bringup.nodes.skill_controller_node:main",
    "safety": "vla_bringup.nodes.safety_node:main",
}
TOOLS = {
    "launch_embedded": "vla_bringup.cli.launch_embedded:main",
    "demo": "vla_bringup.cli.demo:main",
    "teleop_keyboard": "vla_bringup.nodes.teleop_keyboard_node:main",
}

setup(
    name=PACKAGE,
    version="0.1.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # The committed VLA checkpoint (config.json + model.safetensors) ships inside the package.
    package_data={"vla_bringup.policy.vla": ["checkpoints/*/*.json",
                                             "checkpoints/*/*.safetensors"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/robots", glob("config/robots/*.yaml")),
        (f"share/{PACKAGE}/config/gazebo", glob("config/gazebo/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="vla_bringup maintainers",
    maintainer_email="maintainers@vla-bringup.dev",
    description="ROS 2 Vision-Language-Action stack with an embedded PyBullet simulator.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in {**NODES, **TOOLS}.items()],
    },
)
