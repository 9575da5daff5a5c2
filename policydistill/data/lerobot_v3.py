"""LeRobotDataset v3.0 support: the reader lives in :mod:`.lerobot_read`, the writer in
:mod:`.lerobot_write`; this module keeps the historical import path working."""

from .lerobot_read import LeRobotV3Dataset, is_lerobot_v3
from .lerobot_write import write_lerobot_v3

__all__ = ["LeRobotV3Dataset", "is_lerobot_v3", "write_lerobot_v3"]
