"""`python -m engine.recipe --describe` lists exactly the keys a recipe may set, each documented.

Three directions: every key of every shipped recipe is described (with a doc, a type, a default and a
range); every described key loads when a recipe sets it; every key the loader accepts (every field of the
resolved recipe, the `preset:` shorthands, every term kind's parameters) is described, and the loader fields
the trainer owns are neither described nor accepted.
"""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.data.config import LoaderConfig
from engine.recipe import TRAINER_OWNED_DATA_KEYS, describe_recipe, load_recipe, recipe_yaml
from engine.training.typed_yaml import ConfigError, load_yaml_tree

REPO = Path(__file__).resolve().parents[1]
DEMO = "recipes/demo/mixed_fwm.yaml"
ROWS = {row.key: row for row in describe_recipe()}
# A value for the keys whose default is not a value a recipe can write back.
SPECIAL = {"model.preset": "tiny", "predictor.preset": "tiny", "data.crop_size": 64, "data.num_frames": 8,
           "data.datasets[].root": "data/shards/synth-ucf", "objective.custom.terms[].name": "hw",
           "data.datasets": [{"root": "data/shards/synth-ucf"}]}


def _keys(node, prefix: str = ""):
    """Dotted keys of a plain recipe tree that hold a value (a section is not one, unless null), items of lists
    of mappings as `[]`."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _keys(value, dotted + ".")
            continue
        yield dotted
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                yield from _keys(item, dotted + "[].")


def _recipe_keys(tree: dict) -> set[str]:
    """As `_keys`, but a custom objective's term parameters are keyed by their kind: `terms[ld].params.tau`."""
    keys = set(_keys({k: v for k, v in tree.items() if k != "objective"}))
    objective = tree.get("objective") or {}
    keys |= {f"objective.{k}" for k, v in objective.items() if not isinstance(v, dict)}
    for k, v in (objective.get("custom") or {}).items():
        keys.add(f"objective.custom.{k}")
        for term in v if k == "terms" else ():
            keys |= {f"objective.custom.terms[].{t}" for t in term}
            keys |= {f"objective.custom.terms[{term['name']}].params.{p}" for p in term.get("params") or {}}
    return keys


def test_every_described_key_has_doc_type_default_and_range():
    assert len(ROWS) == len(describe_recipe()), "a key is described twice"
    for row in ROWS.values():
        assert row.doc.strip() and row.type and row.default and row.valid, row.line()


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml")))
def test_every_key_of_every_shipped_recipe_is_described(recipe):
    tree, _ = load_yaml_tree(REPO / recipe)
    missing = sorted(_recipe_keys(tree) - set(ROWS))
    assert not missing, f"{recipe}: keys without a --describe line: {missing}"


def _resolved_demo() -> dict:
    """{dotted key: value} of the demo recipe as loaded (its values agree with each other)."""
    plain = yaml.safe_load(recipe_yaml(load_recipe(REPO / DEMO, check_files=False)))
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value
    walk(plain, "")
    return flat


def _value(row, resolved):
    """The demo's own value of the key where it has one (so that cross-key checks hold), else its default."""
    if row.key in SPECIAL:
        return SPECIAL[row.key]
    value = resolved.get(row.key)
    if row.key in resolved and not (isinstance(value, list) and value and isinstance(value[0], dict)):
        return value
    value = ast.literal_eval(row.default)
    return list(value) if isinstance(value, tuple) else value


def _override(key: str, value) -> str:
    """--set text that sets `key`, items of lists as a one-item list, term parameters under their kind."""
    head, bracket, rest = key.partition("[")
    if bracket:
        kind, _, leaf = rest.partition("].")
        item = {}
        if head == "data.datasets":
            item["root"] = SPECIAL["data.datasets[].root"]
        if head == "objective.custom.terms":
            item["name"] = kind or "hw"
            item.update({"params": {leaf.split(".")[-1]: value}} if kind else {leaf: value})
            return f"objective.custom={_flow({'terms': [item]})}"
        item[leaf] = value
        value = [item]
        key = head
    return f"{key}={_flow(value)}"


def _flow(value) -> str:
    """One-line YAML of a value, as typed after --set."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@pytest.mark.parametrize("key", sorted(ROWS))
def test_every_described_key_is_accepted_by_the_loader(key, monkeypatch):
    monkeypatch.chdir(REPO)
    override = _override(key, _value(ROWS[key], _resolved_demo()))
    load_recipe(DEMO, [override], check_files=False)


def test_every_key_the_loader_accepts_is_described(monkeypatch):
    monkeypatch.chdir(REPO)
    # A recipe with every optional section filled: masking with one mask config, a custom objective.
    recipe = load_recipe(DEMO, ["masking.masks=[{num_blocks: 2}]",
                                "objective.custom={terms: [{name: hw, label: h}]}"], check_files=False)
    accepted = _recipe_keys(yaml.safe_load(recipe_yaml(recipe))) | {"model.preset", "predictor.preset"}
    # ... and one with the optional sections null (the section key itself then holds the value).
    nulls = load_recipe(DEMO, ["masking=null", "objective.custom=null"], check_files=False)
    accepted |= _recipe_keys(yaml.safe_load(recipe_yaml(nulls)))
    from engine.objectives.registry import TERM_KINDS
    for name, kind in TERM_KINDS.items():
        accepted |= {f"objective.custom.terms[{name}].params.{f.name}" for f in dataclasses.fields(kind.Params)}
    assert sorted(accepted - set(ROWS)) == []
    assert sorted(set(ROWS) - accepted) == []


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(LoaderConfig)])
def test_a_loader_field_is_described_exactly_when_a_recipe_may_set_it(field, monkeypatch):
    monkeypatch.chdir(REPO)
    described = (f"data.{field}" in ROWS or f"data.{field}[].root" in ROWS
                 or any(key.startswith(f"data.{field}.") for key in ROWS))  # a nested section (data.remote.*)
    assert described == (field not in TRAINER_OWNED_DATA_KEYS)
    if not described:
        with pytest.raises(ConfigError, match=f"data.{field}: set by "):
            load_recipe(DEMO, [f"data.{field}=1"], check_files=False)


def test_describe_cli_prints_the_rows():
    result = subprocess.run([sys.executable, "-m", "engine.recipe", DEMO, "--describe"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [row.line() for row in describe_recipe()]
