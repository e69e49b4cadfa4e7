"""Building into an OUT that already holds something (issue 22 §3.3, shards side).

- A build journal (`.building-<split>/rows-NNNNNN.json`) naming a shard or key outside OUT is refused when
  the build resumes, before any transcoding (it used to be refused only when the index was merged, after
  transcoding the rest of the split).
- A split the manifest lists but whose tars or index rows are gone is not "already built": the build says
  so in one line and builds it again (it used to print "nothing to do", or warn that every source of each
  class had been rejected); `shards.verify` names index rows of a split the manifest does not list.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import fixtures_raw as raw
from shards import pipeline
from shards.build import main as build_main
from shards.verify import main as verify_main


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "fold"
    for split in ("train", "test"):
        for name in ("left", "right"):
            for n in range(2):
                raw.write_video(root / split / name / f"{split}{n}.avi", 8, seed=n, height=24, width=32)
    return root


def build(root: Path, out: Path, *extra: str) -> int:
    return build_main(["folder", "--root", str(root), "--out", str(out), "--dataset-name", "fold", "--workers", "1",
                       "--quiet", "--shard-max-samples", "1", *extra])


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def count_transcodes(monkeypatch) -> list:
    calls = []
    real = pipeline.transcode_job
    monkeypatch.setattr(pipeline, "transcode_job", lambda job: calls.append(job) or real(job))
    return calls


@pytest.mark.parametrize("column, value", [("shard", "../elsewhere/train-000000.tar"), ("key", "../../evil")])
def test_unsafe_names_in_a_journal_rows_file_are_refused_before_transcoding(video_tree, tmp_path, capsys,
                                                                            monkeypatch, column, value):
    out = tmp_path / "out"
    commit = pipeline.BuildState.commit

    def stop_after_first_shard(state, closed, rejects, next_position):
        commit(state, closed, rejects, next_position)
        if state.shards:
            raise KeyboardInterrupt  # as a Ctrl-C after the first shard was journalled

    with monkeypatch.context() as patch:
        patch.setattr(pipeline.BuildState, "commit", stop_after_first_shard)
        assert build(video_tree, out, "--split", "train") == 130
    rows_file = out / ".building-train" / "rows-000000.json"
    rows = json.loads(rows_file.read_text())
    rows[0][column] = value
    rows_file.write_text(json.dumps(rows))
    capsys.readouterr()

    transcoded = count_transcodes(monkeypatch)
    code = build(video_tree, out, "--split", "train")
    line = one_line(capsys.readouterr().err)
    assert transcoded == [], f"{len(transcoded)} sources transcoded before the journal was refused"
    assert code == 2 and str(rows_file) in line and repr(value) in line and "outside the shard folder" in line, line
    assert f"{value!r} is a path through '..'" in line, line  # it read "is contains '..'"


@pytest.mark.parametrize("lost", ["tar", "index rows", "index"])
def test_a_split_missing_from_an_existing_folder_is_built_again(video_tree, tmp_path, capsys, lost):
    out = tmp_path / "out"
    assert build(video_tree, out) == 0
    whole = {p.name: p.read_bytes() for p in out.iterdir()}
    if lost == "tar":
        (out / "test-000001.tar").unlink()
    elif lost == "index rows":
        table = pq.read_table(out / "index.parquet")
        pq.write_table(table.filter(pc.equal(table["split"], "train")), out / "index.parquet")
    else:
        (out / "index.parquet").unlink()
    capsys.readouterr()
    assert verify_main([str(out)]) == (2 if lost == "index" else 1)  # 2: no index, not a shard folder yet
    assert build(video_tree, out) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.out.splitlines() if "not whole" in line]
    assert said and all("building it again" in line for line in said), captured.out
    assert "has no samples" not in captured.err, captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == whole  # the very same files as the first build
    assert verify_main([str(out)]) == 0


def test_verify_names_index_rows_of_a_split_the_manifest_does_not_list(video_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert build(video_tree, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["splits"]["test"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert verify_main([str(out)]) == 1
    assert "holds rows of split 'test', which the manifest does not list" in capsys.readouterr().err
