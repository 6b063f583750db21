"""Stills of a rendered video, made once when its task completes and stored beside
it: a WebP thumbnail (the middle frame) and a JPEG spritesheet (a grid of frames
spread over the clip), as OpenAI's ``/v1/videos/{id}/content`` variants
``thumbnail`` and ``spritesheet`` serve them. Also what was rendered: width,
height and seconds, for the Video object's ``size`` and ``seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

# The spritesheet: up to COLUMNS × ROWS frames, each TILE_WIDTH pixels wide.
COLUMNS, ROWS = 4, 3
TILE_WIDTH = 256
THUMBNAIL_QUALITY = 80
SPRITESHEET_QUALITY = 85


@dataclass(frozen=True)
class Stills:
    width: int
    height: int
    seconds: float

    def media(self) -> dict:
        """What the task row keeps (``tasks.media``)."""
        return {"width": self.width, "height": self.height, "seconds": round(self.seconds, 3)}


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        # No count in the container: count packets (demuxing only, no decoding).
        return sum(1 for packet in container.demux(stream) if packet.size)


def make_stills(video: Path, thumbnail: Path, spritesheet: Path) -> Stills:
    """Write the thumbnail and the spritesheet of ``video``; return its size and length."""
    total = max(1, _frame_count(video))
    tiles = min(COLUMNS * ROWS, total)
    wanted = {round(i * (total - 1) / max(1, tiles - 1)) for i in range(tiles)}
    middle = total // 2
    picked: list[Image.Image] = []
    still: Image.Image | None = None
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        fps = float(stream.average_rate) if stream.average_rate else None
        seconds = (
            float(stream.duration * stream.time_base)
            if stream.duration is not None and stream.time_base is not None
            else total / (fps or 24)
        )
        for index, frame in enumerate(container.decode(stream)):
            if index == middle or (still is None and index >= total - 1):
                still = frame.to_image()
            if index in wanted:
                image = frame.to_image()
                tile_height = max(1, round(TILE_WIDTH * image.height / image.width))
                picked.append(image.resize((TILE_WIDTH, tile_height), Image.Resampling.BILINEAR))
            if index >= max(max(wanted), middle):
                break
    if still is None or not picked:
        raise ValueError(f"{video}: no frame to make stills from")
    thumbnail.parent.mkdir(parents=True, exist_ok=True)
    still.save(thumbnail, format="WEBP", quality=THUMBNAIL_QUALITY)
    columns = min(COLUMNS, len(picked))
    rows = -(-len(picked) // columns)
    tile_height = picked[0].height
    sheet = Image.new("RGB", (columns * TILE_WIDTH, rows * tile_height))
    for index, tile in enumerate(picked):
        sheet.paste(tile, ((index % columns) * TILE_WIDTH, (index // columns) * tile_height))
    sheet.save(spritesheet, format="JPEG", quality=SPRITESHEET_QUALITY)
    return Stills(width, height, seconds)
