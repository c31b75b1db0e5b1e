"""Names of the robot's command space, shared by every node and the simulator."""

# Franka Panda: 7 revolute arm joints (rad) and 2 prismatic fingers (m, 0 closed .. 0.04 open).
PANDA_ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
PANDA_JOINT_NAMES = PANDA_ARM_JOINTS + PANDA_FINGER_JOINTS
PANDA_FINGER_OPEN = 0.04  # m, each finger fully open
