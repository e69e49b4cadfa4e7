"""Every libx264 encode the project makes gives the same bytes on any CPU and on every repeat (issue 22 §1).

libx264 picks CPU-dependent algorithms unless told `cpu-independent=1`. On a 2-core AMD EPYC with AVX-512
the same frames encoded 10 times in one process with the synth generator's settings gave up to 5
distinct outputs (7 of the 12 test-scale synth-diving clips), which broke
tests/test_synth.py::test_same_seed_same_bytes_any_worker_count there. Two kinds of test:

- repeat tests: encode each clip several times in one process and require one output. They fail on the
  code before the fix on an AVX-512 CPU; on an AVX2 CPU they pass either way (x264's AVX2 code repeats
  itself there), so they guard the AVX-512 machines.
- C-code tests: the bytes must equal those of the same settings with x264's assembly turned off
  (`no-asm=1`), i.e. its portable C code, which is what cpu-independent=1 promises. They fail on the code
  before the fix on this AVX2 CPU too (10 of the 12 clips differed), and prove the option reaches libx264
  through PyAV's `x264-params`. libx264 cannot be asked directly: the options list it writes into the
  stream (the SEI "x264 - core ... options: ...", x264_param2string) never mentions cpu-independent.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shards.synth import diving, media
from shards.synth.scales import SCALES
from shards.transcode import Encoded, TranscodeSettings, transcode_video

REPEATS = 5
SCALE = SCALES["test"]
H264 = TranscodeSettings(codec="h264", container="mp4")


def with_x264_params(options: dict, extra: str) -> dict:
    """`options` with `extra` appended to its x264-params (x264's own key=value:key=value list)."""
    params = [part for part in (options.get("x264-params"), extra) if part]
    return {**options, "x264-params": ":".join(params)}


@pytest.fixture(scope="module")
def diving_frames() -> dict:
    """{relpath: [T, H, W, 3] uint8} of every test-scale synth-diving clip, rendered once."""
    return {job.relpath: diving.render_frames(job, SCALE, 0) for job in diving.plan(SCALE, 0)}


@pytest.fixture(scope="module")
def h264_sources(tmp_path_factory, diving_frames) -> list[Path]:
    """The synth-diving clips as source files for `shards.build --codec h264` (noisy, textured content)."""
    folder = tmp_path_factory.mktemp("h264-sources")
    paths = []
    for relpath, frames in diving_frames.items():
        path = folder / Path(relpath).name
        path.write_bytes(media.encode_video(frames, media.DIVING_MP4))
        paths.append(path)
    return paths


def transcoded(path: Path, settings: TranscodeSettings = H264) -> bytes:
    result = transcode_video(path, settings)
    assert isinstance(result, Encoded), result
    return result.data


def test_each_synth_diving_clip_encodes_to_one_output_in_one_process(diving_frames):
    """Fails before the fix on an AVX-512 CPU (up to 5 outputs per clip in 10 repeats); passes on AVX2 either way."""
    assert len(diving_frames) == 12
    outputs = {relpath: {media.encode_video(frames, media.DIVING_MP4) for _ in range(REPEATS)}
               for relpath, frames in diving_frames.items()}
    unstable = {relpath: len(found) for relpath, found in outputs.items() if len(found) != 1}
    assert not unstable, f"clips with more than one output in {REPEATS} encodes: {unstable}"


def test_transcoder_h264_encodes_to_one_output_in_one_process(h264_sources):
    """Fails before the fix on an AVX-512 CPU; passes on AVX2 either way (see the module docstring)."""
    outputs = {path.name: {transcoded(path) for _ in range(REPEATS)} for path in h264_sources}
    unstable = {name: len(found) for name, found in outputs.items() if len(found) != 1}
    assert not unstable, f"sources with more than one h264 output in {REPEATS} transcodes: {unstable}"


def test_synth_diving_bytes_are_x264s_c_code_bytes(diving_frames):
    """Fails before the fix on any x86 CPU with x264 SIMD (here AVX2: 10 of 12 clips differed)."""
    c_code = replace(media.DIVING_MP4, options=with_x264_params(media.DIVING_MP4.options, "no-asm=1"))
    differ = [relpath for relpath, frames in diving_frames.items()
              if media.encode_video(frames, media.DIVING_MP4) != media.encode_video(frames, c_code)]
    assert not differ, f"{len(differ)} of {len(diving_frames)} clips depend on x264's SIMD code: {differ}"


def test_transcoder_h264_bytes_are_x264s_c_code_bytes(h264_sources, monkeypatch):
    """Fails before the fix on any x86 CPU with x264 SIMD, this AVX2 one included."""
    with_cpu_code = {path.name: transcoded(path) for path in h264_sources}
    production = TranscodeSettings.encoder_options
    monkeypatch.setattr(TranscodeSettings, "encoder_options",
                        lambda self: with_x264_params(production(self), "no-asm=1"))
    differ = [path.name for path in h264_sources if transcoded(path) != with_cpu_code[path.name]]
    assert not differ, f"{len(differ)} of {len(h264_sources)} h264 transcodes depend on x264's SIMD code: {differ}"


def test_every_x264_setting_asks_for_cpu_independence():
    """The two places the project configures libx264; a third would need the same option."""
    for options in (media.DIVING_MP4.options, H264.encoder_options(), replace(H264, crf=18).encoder_options()):
        assert "cpu-independent=1" in options.get("x264-params", "").split(":"), options
