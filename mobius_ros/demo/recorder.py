"""The demo session as a rosbag2 (mcap) recording: camera images and every node output.

Messages arrive from rclpy already CDR-serialisable; `serialize_message` gives exactly the bytes
rosbag2 stores, so they are written raw (no re-encoding through another message library). The
connections' definitions come from `mobius_ros.ros.bag.make_typestore` (Jazzy + vision_msgs +
mobius_ros_msgs), so `ros2 bag play`, Foxglove and `rosbags` read the file with full types.

The bag is written under a hidden name and renamed when closed, so a crashed session never
leaves a complete-looking recording (as `mobius bag` does).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any


class SessionRecorder:
    """Write (topic, type, log time, CDR bytes) records into `<destination>` (mcap storage)."""

    def __init__(self, destination: Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        from mobius_ros.ros.bag import make_typestore

        self.destination = Path(destination)
        # A hidden folder beside the destination holds the bag under its final name (the .mcap
        # file inside is named after its folder), so closing is one rename.
        self._partial = self.destination.parent / f'.{self.destination.name}.partial-{os.getpid()}'
        shutil.rmtree(self._partial, ignore_errors=True)
        self._partial.mkdir(parents=True)
        self._staging = self._partial / self.destination.name
        self._typestore = make_typestore()
        self._writer = Writer(self._staging, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes) -> None:
        """Record one serialised message; `msgtype` is 'pkg/msg/Name'."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            self._connections[topic] = connection
        self._writer.write(connection, int(timestamp_ns), bytes(data))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self, *, keep: bool = True) -> Path | None:
        """Finish the file; move it to `destination` (replacing an older recording) if `keep`."""
        if self._writer is None:
            return self.destination if keep else None
        self._writer.close()
        self._writer = None
        if not keep:
            shutil.rmtree(self._partial, ignore_errors=True)
            return None
        if self.destination.exists():
            if not (self.destination / 'metadata.yaml').is_file():
                raise FileExistsError(f'{self.destination} exists and is not a rosbag2 recording')
            shutil.rmtree(self.destination)
        os.replace(self._staging, self.destination)
        shutil.rmtree(self._partial, ignore_errors=True)
        return self.destination

    def __enter__(self) -> SessionRecorder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close(keep=kind is None)
