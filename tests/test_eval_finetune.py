"""Low-label fine-tuning (engine/eval/finetune.py): a copy of the encoder is trained, the evaluated one is not;
one seed gives one result; the labelled clips are the class-balanced key-hash subset; `evaluate --low-label`
puts the rows in the table, table.csv and <encoder>.low_label.json."""
import csv
import json

import pytest
import torch

from data_fixtures import write_benchmark_folder
from engine.eval.encoders import pixel_encoder, random_encoder
from engine.eval.finetune import Clips, LowLabelConfig, evaluate_low_label, finetune, finetune_and_score, labelled_keys
from engine.models import model_preset

TINY = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=1, num_heads=4)
CONFIG = LowLabelConfig(per_class=2, epochs=3, batch_size=4)


def _clips(count: int, seed: int) -> Clips:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    video = torch.randn(count, 3, 4, 16, 16, generator=generator) + labels.view(-1, 1, 1, 1, 1).float()
    return Clips(video.to(torch.float16), labels, [f"c{seed}_{i}" for i in range(count)])


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_finetune_trains_a_copy_and_leaves_the_encoder_untouched():
    encoder = random_encoder("r", TINY, seed=0).load(torch.device("cpu"))
    before = _snapshot(encoder)
    model, loss = finetune(encoder, _clips(9, 1), 3, CONFIG, seed=0, device=torch.device("cpu"))
    after = model.encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("blocks.") for k in changed) and any(k.startswith("patch_embed") for k in changed)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # the evaluated object as it was
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert loss == loss and loss > 0  # a real number


def test_pixel_baseline_finetunes_its_patch_embedding_and_norm_only():
    pixels = pixel_encoder("p", TINY, seed=0).load(torch.device("cpu"))
    before = _snapshot(pixels)
    model, _ = finetune(pixels, _clips(9, 1), 3, CONFIG, seed=0, device=torch.device("cpu"))
    after = model.encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("patch_embed" in k for k in changed) and any("level_norms" in k for k in changed)
    assert not any(".blocks." in k for k in changed)  # the baseline has no blocks to train
    assert all(torch.equal(before[k], v) for k, v in pixels.state_dict().items())
    result = finetune_and_score(pixels, _clips(9, 1), _clips(6, 2), 3, CONFIG, seed=0, device=torch.device("cpu"))
    trained = sum(p.numel() for name, p in pixels.named_parameters() if ".blocks." not in name)
    assert result["trained_parameters"] == trained


def test_finetune_is_deterministic_per_seed():
    encoder = random_encoder("r", TINY, seed=0).load(torch.device("cpu"))
    train, test = _clips(9, 1), _clips(12, 2)
    runs = [finetune_and_score(encoder, train, test, 3, CONFIG, seed=s, device=torch.device("cpu")) for s in (0, 0, 1)]
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert drop(runs[0]) == drop(runs[1])
    assert runs[0]["final_train_loss"] != runs[2]["final_train_loss"]  # another seed: another head and order
    first, _ = finetune(encoder, train, 3, CONFIG, seed=0, device=torch.device("cpu"))
    second, _ = finetune(encoder, train, 3, CONFIG, seed=0, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


@pytest.fixture(scope="module")
def shards_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_benchmark_folder(root / "synth-diving", 6, 3, num_frames=8, height=16, width=16)
    return root


def test_evaluate_low_label_uses_the_key_hash_subset_and_reuses_results(shards_root, tmp_path):
    from engine.eval.clips import eval_batches
    from engine.eval.encoder_eval import balanced_subset

    loads = []

    def counting_loader(folder, split, spec, batch_size):
        loads.append(split)
        return eval_batches(folder, split, spec, batch_size=batch_size)

    folder = shards_root / "synth-diving"
    keep = labelled_keys(folder, "train", 1)
    import pyarrow.parquet as pq
    rows = [r for r in pq.read_table(folder / "index.parquet").to_pylist() if r["split"] == "train"]
    assert keep == {rows[i]["key"] for i in balanced_subset([r["key"] for r in rows], [r["label"] for r in rows], 1)}
    assert sorted(rows[i]["label"] for i in range(len(rows)) if rows[i]["key"] in keep) == [0, 1, 2]
    config = LowLabelConfig(per_class=1, epochs=2, batch_size=4)
    args = (random_encoder("ll", TINY, seed=0), ("synth-diving",), config, 2, shards_root, tmp_path / "cache",
            tmp_path / "evals")
    summaries = evaluate_low_label(*args, batch_source=counting_loader, device=torch.device("cpu"))
    stored = json.loads((tmp_path / "evals" / "ll.low_label.json").read_text())["benchmarks"]["synth-diving"]
    assert sorted(stored["seeds"]) == ["0", "1"] and stored["key"]["per_class"] == 1
    assert all(s["num_train"] == 3 and s["num_test"] == 3 for s in stored["seeds"].values())
    summary = summaries[("synth-diving", "finetune_1_per_class")]
    assert summary.values == (stored["seeds"]["0"]["top1"], stored["seeds"]["1"]["top1"])
    assert loads == ["train", "test"]
    again = evaluate_low_label(*args, batch_source=counting_loader, device=torch.device("cpu"))
    assert again == summaries and loads == ["train", "test"]  # results reused, nothing decoded
    (tmp_path / "evals" / "ll.low_label.json").unlink()
    evaluate_low_label(*args, batch_source=counting_loader, device=torch.device("cpu"))
    assert loads == ["train", "test"]  # recomputed from the decoded-clip cache
    redone = json.loads((tmp_path / "evals" / "ll.low_label.json").read_text())["benchmarks"]["synth-diving"]
    timeless = lambda entry: {s: {k: v for k, v in r.items() if k != "seconds"} for s, r in entry["seeds"].items()}  # noqa: E731
    assert timeless(redone) == timeless(stored)  # the same clips, the same seeds: the same results


def test_evaluate_command_reports_knn_and_low_label(shards_root, tmp_path, capsys):
    import engine.eval.evaluate as evaluate
    from engine.export import export_encoder
    from engine.models import VisionTransformer

    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    help_text = capsys.readouterr().out
    assert "--low-label N" in help_text and "--low-label-epochs" in help_text
    export = export_encoder(VisionTransformer(TINY), TINY, tmp_path / "run" / "encoder.safetensors",
                            trained_encoder="target_encoder", step=1)
    out = tmp_path / "eval"
    code = evaluate.main([str(export), "--benchmarks", "synth-diving", "--shards", str(shards_root), "--out", str(out),
                          "--probe-epochs", "1", "--probe-seeds", "2", "--baselines", "--low-label", "1",
                          "--low-label-epochs", "1"])
    table = capsys.readouterr().out
    assert code == 0
    lines = table.splitlines()
    for probe in ("paper_attentive", "knn_k20", "finetune_1_per_class"):
        assert len([line for line in lines if f" {probe} " in line]) == 3, table  # run, random init, pixels
    with open(out / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    probes = {(r["encoder"].split(" (")[0], r["probe"]): r for r in rows}
    assert {p for _, p in probes} == {"paper_attentive", "knn_k20", "finetune_1_per_class"} and len(rows) == 9
    assert probes[("run", "knn_k20")]["values"] == "1" and probes[("run", "knn_k20")]["top1_low"] == ""
    assert probes[("run", "finetune_1_per_class")]["values"] == "2"
    assert float(probes[("run", "finetune_1_per_class")]["top1_low"]) <= float(probes[("run", "finetune_1_per_class")]["top1_mean"])
    stored = json.loads((out / "evals" / "run.low_label.json").read_text())
    assert stored["benchmarks"]["synth-diving"]["key"]["epochs"] == 1
    assert "knn" in json.loads((out / "evals" / "run.json").read_text())["benchmarks"]["synth-diving"]
