"""One raw file -> the canonical sample of docs/contracts.md §1 (shard members), or the reason it is rejected.

Videos: decoded with PyAV and re-encoded as VP9 (default; DALI decodes it on CPU and on NVDEC) or
H.264 (GPU-only fleets), yuv420p, constant frame rate (frames re-timed at the source's average rate),
a keyframe at least every `gop` (<= 16) frames, no audio, short side capped and both sides even.
The encoder runs single-threaded with bit-exact muxing, so the same input gives the same bytes; x264
also runs CPU-independent (X264_REPRODUCIBLE), without which its SIMD paths change the bytes per CPU.
Images: kept byte-for-byte when they are RGB or greyscale JPEG within the size cap, else re-encoded
as JPEG.

A file that is missing, empty, undecodable, truncated, holds no frames or a video shorter than
MIN_VIDEO_FRAMES becomes a `Rejected` with a one-line reason; nothing here raises for bad media.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType
from av.video.reformatter import Interpolation
from PIL import Image

MAX_GOP = 16
# swscale's SIMD paths round differently from its C code: a downscaled clip's bytes depended on the CPU
# (36 of 68 synth sources scaled to a 16-pixel short side changed with FFmpeg's SIMD turned off).
# BITEXACT with ACCURATE_RND makes every path compute what the C code does.
SWS_EXACT = Interpolation.BITEXACT | Interpolation.ACCURATE_RND
ENCODERS = {"vp9": "libvpx-vp9", "h264": "libx264"}
DEFAULT_CRF = {"vp9": 30, "h264": 23}
# libx264 otherwise picks CPU-dependent algorithms (SIMD intra-mode search, float mbtree propagation): the
# same frames gave other bytes on an AVX2 CPU than with x264's C code, and on an AVX-512 CPU even differed
# between repeats in one process. cpu-independent=1 makes x264 use its canonical algorithms, whose output
# equals the C code's (tests/test_x264_reproducible.py). x264 does not list it in the options it writes
# into the stream (common/base.c x264_param2string), so the test compares bytes with no-asm=1 instead.
X264_REPRODUCIBLE = {"x264-params": "cpu-independent=1"}
FALLBACK_FPS = Fraction(25)
# A container may over-declare its length by a frame or two (edit lists, a dropped last frame);
# a truncated file misses far more than this.
TRUNCATION_SLACK_FRAMES, TRUNCATION_SLACK_FRACTION = 2, 0.05
# Fewest frames a video may hold: two tubelets of 2 frames, the least that carries any motion for a
# video model. Shorter ones would be looped into static clips by the loader and train as stills; they
# are rejected whatever the recipe. Images (ImageNet) are stills by design and not subject to this.
MIN_VIDEO_FRAMES = 4


@dataclass(frozen=True)
class TranscodeSettings:
    codec: str = "vp9"         # vp9 | h264
    container: str = "mp4"     # mp4 | webm (webm holds VP9 only)
    short_side: int = 256      # cap on min(width, height); smaller sources are not upscaled
    gop: int = MAX_GOP         # keyframe interval in frames, 1..16
    crf: int | None = None     # None: DEFAULT_CRF of the codec
    jpeg_quality: int = 90     # for images that must be re-encoded

    def encoder_options(self) -> dict[str, str]:
        crf = str(self.crf if self.crf is not None else DEFAULT_CRF[self.codec])
        if self.codec == "vp9":
            # realtime + cpu-used 8: ~800 frames/s at 340x256 on one core; no lag or
            # row-mt so the output does not depend on thread timing.
            return {"deadline": "realtime", "cpu-used": "8", "crf": crf, "b": "0", "g": str(self.gop),
                    "lag-in-frames": "0", "row-mt": "0", "tile-columns": "0"}
        return {"preset": "veryfast", "crf": crf, "g": str(self.gop), "bf": "0", **X264_REPRODUCIBLE}


@dataclass(frozen=True)
class Encoded:
    data: bytes
    ext: str          # mp4 | webm | jpg
    codec: str        # vp9 | h264 | jpeg
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


@dataclass(frozen=True)
class Rejected:
    reason: str


def capped_size(width: int, height: int, short_side: int, even: bool) -> tuple[int, int]:
    """Scale so min(w, h) <= short_side keeping the aspect; video sides are rounded down to even."""
    scale = min(1.0, short_side / min(width, height))
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    if even:
        new_width, new_height = max(2, new_width - new_width % 2), max(2, new_height - new_height % 2)
    return new_width, new_height


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _source_rate(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and 1 <= float(rate) <= 240:
            return Fraction(rate).limit_denominator(1001)
    return FALLBACK_FPS


def _declared_frames(container, stream, rate: Fraction) -> int:
    """Frames the container promises: its frame count, else its duration times the rate (WebM)."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return round(float(stream.duration * stream.time_base * rate))
    if container.duration:
        return round(container.duration / 1_000_000 * float(rate))
    return 0


class _ClipEncoder:
    """Streams decoded frames into an in-memory canonical clip."""

    def __init__(self, first_frame, rate: Fraction, settings: TranscodeSettings):
        self.width, self.height = capped_size(first_frame.width, first_frame.height, settings.short_side, even=True)
        self.downscale = self.width < first_frame.width
        self.rate = rate
        self.count = 0
        self.buffer = io.BytesIO()
        container_format = "webm" if settings.container == "webm" else "mp4"
        self.output = av.open(self.buffer, "w", format=container_format, container_options={"fflags": "+bitexact"})
        self.stream = self.output.add_stream(ENCODERS[settings.codec], rate=rate)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.thread_count = 1
        self.stream.options = settings.encoder_options()
        self.ext, self.codec = settings.container, settings.codec

    def add(self, frame) -> None:
        interpolation = (Interpolation.AREA if self.downscale else Interpolation.BILINEAR) | SWS_EXACT
        out = frame.reformat(width=self.width, height=self.height, format="yuv420p", interpolation=interpolation)
        out.pts, out.time_base = self.count, 1 / self.rate
        out.pict_type = PictureType.NONE  # source keyframe flags must not steer the new GOP
        for packet in self.stream.encode(out):
            self.output.mux(packet)
        self.count += 1

    def finish(self) -> Encoded:
        for packet in self.stream.encode():
            self.output.mux(packet)
        self.output.close()
        return Encoded(self.buffer.getvalue(), self.ext, self.codec, self.count, float(self.rate),
                       self.width, self.height)


def transcode_video(path: Path, settings: TranscodeSettings) -> Encoded | Rejected:
    if not path.is_file():
        return Rejected("file not found")
    if path.stat().st_size == 0:
        return Rejected("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        return Rejected(f"cannot open: {_one_line(error)}")
    with container:
        if not container.streams.video:
            return Rejected("no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1
        rate = _source_rate(stream)
        declared = _declared_frames(container, stream, rate)
        encoder = None
        decoded = 0
        try:
            for frame in container.decode(stream):
                if encoder is None:
                    encoder = _ClipEncoder(frame, rate, settings)
                encoder.add(frame)
                decoded += 1
        except av.FFmpegError as error:
            return Rejected(f"decode error after {decoded} frames: {_one_line(error)}")
    if encoder is None:
        return Rejected("zero frames decoded")
    slack = max(TRUNCATION_SLACK_FRAMES, int(TRUNCATION_SLACK_FRACTION * declared))
    if declared and decoded + slack < declared:
        return Rejected(f"truncated: decoded {decoded} of the {declared} frames the container declares")
    if decoded < MIN_VIDEO_FRAMES:
        return Rejected(f"too short: {decoded} frame{'s' if decoded != 1 else ''}, a video needs at least "
                        f"{MIN_VIDEO_FRAMES} (two tubelets of 2); a still belongs in an image file")
    return encoder.finish()


def transcode_image(path: Path, settings: TranscodeSettings) -> Encoded | Rejected:
    if not path.is_file():
        return Rejected("file not found")
    data = path.read_bytes()
    if not data:
        return Rejected("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a truncated JPEG fails here, not at open()
            width, height = image.size
            new_width, new_height = capped_size(width, height, settings.short_side, even=False)
            if image.format == "JPEG" and image.mode in ("RGB", "L") and (new_width, new_height) == (width, height):
                return Encoded(data, "jpg", "jpeg", 1, 0.0, width, height)
            converted = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return Rejected(f"cannot decode image: {_one_line(error)}")
    if (new_width, new_height) != (width, height):
        converted = converted.resize((new_width, new_height), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buffer = io.BytesIO()
    converted.save(buffer, format="JPEG", quality=settings.jpeg_quality)
    return Encoded(buffer.getvalue(), "jpg", "jpeg", 1, 0.0, new_width, new_height)


def transcode_job(job: tuple[str, str, TranscodeSettings]) -> Encoded | Rejected:
    """Worker entry point: (path, kind, settings) -> result. Never raises, so one bad file cannot stop a build."""
    path, kind, settings = job
    try:
        if kind == "image":
            return transcode_image(Path(path), settings)
        return transcode_video(Path(path), settings)
    except Exception as error:  # noqa: BLE001 - any failure of one source is that source's reject reason
        return Rejected(f"unexpected error: {_one_line(error)}")
