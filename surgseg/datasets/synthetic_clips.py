"""Synthetic surgery clips made by ``surgseg.synthetic``: a folder holding one clip (a folder
with ``clip.json``) or several. Frames are decoded from the clip's encoded video, so training
sees the same codec artefacts as inference; masks come from the clip's exact labels.
All frames are decoded once, at construction, and kept in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from surgseg.datasets import InMemorySet, natural_sorted, video_names
from surgseg.decode import read_frames
from surgseg.errors import DatasetError
from surgseg.synthetic import load_clip
from surgseg.tasks import TASKS


class SyntheticClips(InMemorySet):
    """Frames and masks of synthetic clips.

    Args:
        root: a clip folder, or a folder of clip folders.
        task: ``binary``, ``parts`` or ``types``.
        videos: clip folder names to use; default all.
    """

    frame_digits = 5

    @classmethod
    def find_videos(cls, root: Path) -> list[str]:
        if (root / "clip.json").is_file():
            return [root.name]
        return natural_sorted(p.parent.name for p in root.glob("*/clip.json"))

    def __init__(
        self,
        root: str | Path,
        *,
        task: str,
        videos: Sequence[str | int] | None = None,
    ):
        self.root = Path(root)
        self.task = task
        self.class_names = TASKS[task]
        found = self.find_videos(self.root)
        names = video_names(videos, "")
        if names is None:
            names = found
        missing = sorted(set(names) - set(found))
        if missing:
            raise DatasetError(f"no clip folders {missing} (folders with a clip.json)", self.root)
        single = (self.root / "clip.json").is_file()
        folders = [self.root if single else self.root / n for n in names]
        super().__init__()
        for folder in folders:
            clip = load_clip(folder)
            images = [f.image for f in read_frames(clip.video)]
            if len(images) != len(clip):
                raise DatasetError(
                    f"{len(images)} decoded frames for {len(clip)} labelled ones", clip.video
                )
            self.images += images
            self.masks += [clip.mask(task, i) for i in range(len(clip))]
            self.items += [(folder.name, i) for i in range(len(clip))]
