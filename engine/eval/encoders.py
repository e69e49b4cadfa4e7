"""The encoders a study evaluates: a run's exported trained encoder, or a random-init or pixel reference.

A run's export (`runs/<name>/encoder.safetensors`, engine.export) already holds the encoder that was
actually trained (`trained_encoder` = EMA "target_encoder", or the online "encoder" of a run without
EMA: docs/paper.md §6.3), so evaluation never reads a raw checkpoint key. The random-init reference is the
same architecture built from the same ModelConfig with a seed and never trained: the row that tells
what the probes get from the architecture and the data alone. The pixel baseline (engine.eval.pixel_baseline)
is that random encoder's patch embedding without its blocks: what the probes get from the pixels alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models import ModelConfig, VisionTransformer

from .errors import EvalInputError
from .pixel_baseline import PixelBaseline

EXPORT_NAME = "encoder.safetensors"
REFERENCE_KINDS = ("random", "pixel")  # built from a ModelConfig and a seed, never trained


@dataclass(frozen=True)
class EncoderSource:
    """Where an evaluated encoder comes from."""

    name: str  # row name in results.csv, e.g. "demo_mixed_hw_s1" or "random_init_s0"
    kind: str  # "run" (a trained export), "random" (fresh init of model_config with seed) or "pixel" (its
    # patch embedding and last norm only, engine.eval.pixel_baseline)
    path: str = ""  # the export file, for kind "run"
    model_config: str = ""  # JSON of the ModelConfig, for kinds "random" and "pixel"
    seed: int = 0  # init seed, for kinds "random" and "pixel"

    def check(self) -> None:
        """A run's export exists and is an export of this engine; else a one-line EvalInputError."""
        if self.kind != "run":
            return
        from safetensors import SafetensorError

        from engine.export import read_metadata

        if not Path(self.path).is_file():
            raise EvalInputError(f"{self.path}: no exported encoder here; finish the run (train.export_at_end) or "
                                 f"export a checkpoint with `python -m engine.export <run>/checkpoints/step_N "
                                 f"--out {self.path}`")
        try:
            read_metadata(self.path)
        except SafetensorError as error:
            raise EvalInputError(f"{self.path}: not a safetensors file ({error}); expected the "
                                 f"encoder.safetensors that engine.export writes") from None
        except ValueError as error:  # read_metadata's one-line "not an encoder export of this engine"
            raise EvalInputError(str(error)) from None

    def fingerprint(self) -> str:
        """Identifies the weights: the export's sha256, or the kind, config and seed of a reference."""
        digest = hashlib.sha256()
        if self.kind == "run":
            with open(self.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        elif self.kind in REFERENCE_KINDS:
            digest.update(f"{self.kind}:{self.seed}:{self.model_config}".encode())
        else:
            raise ValueError(f"encoder {self.name}: unknown kind {self.kind!r}; use 'run' or one of {REFERENCE_KINDS}")
        return digest.hexdigest()[:16]

    def load(self, device: torch.device) -> torch.nn.Module:
        """The encoder (a module with `cfg` and `forward_eval`) in eval mode with frozen parameters."""
        if self.kind == "run":
            from engine.export import load_encoder

            if not Path(self.path).exists():
                raise FileNotFoundError(f"{self.path}: no exported encoder; finish the run (train.export_at_end) "
                                        f"or export a checkpoint with `python -m engine.export`")
            return load_encoder(self.path, device)
        cfg = ModelConfig(**json.loads(self.model_config))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            encoder = VisionTransformer(cfg)
        if self.kind == "pixel":
            encoder = PixelBaseline(encoder)
        encoder.requires_grad_(False)
        return encoder.eval().to(device)

    def describe(self) -> dict:
        """What the report records about this encoder."""
        info = {"name": self.name, "kind": self.kind, "seed": self.seed}
        if self.kind == "run":
            from engine.export import read_metadata

            meta = read_metadata(self.path)
            info.update(path=self.path, trained_encoder=meta.get("trained_encoder", ""), step=meta.get("step"),
                        variant=meta.get("variant", ""), model_config=meta.get("model_config"))
        else:
            info["model_config"] = json.loads(self.model_config)
        return info


def run_encoder(name: str, run_dir: str | Path) -> EncoderSource:
    return EncoderSource(name=name, kind="run", path=str(Path(run_dir) / EXPORT_NAME))


def random_encoder(name: str, model_config: ModelConfig | dict, seed: int) -> EncoderSource:
    config = dataclasses.asdict(model_config) if isinstance(model_config, ModelConfig) else dict(model_config)
    return EncoderSource(name=name, kind="random", model_config=json.dumps(config, sort_keys=True), seed=seed)


def pixel_encoder(name: str, model_config: ModelConfig | dict, seed: int) -> EncoderSource:
    """The pixel baseline of the architecture: random_encoder's patch embedding and last norm, no blocks."""
    return dataclasses.replace(random_encoder(name, model_config, seed), kind="pixel")


def export_model_config(export_path: str | Path) -> dict:
    """The ModelConfig (as a dict) stored in a run's export, to build the random-init reference alike."""
    from engine.export import read_metadata

    return read_metadata(export_path)["model_config"]
