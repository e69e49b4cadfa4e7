"""The variant registry: names, coefficients against docs/paper.md §3, mask generators, recipe listings."""
import dataclasses

import pytest

from engine.masking import MASKING_REGISTRY
from engine.objectives import TERM_KINDS, VARIANTS, Term, Variant, build_objective, resolve_variant
from engine.objectives.base import parse_params

STUDY_ROWS = {
    # mixed regime (docs/paper.md §3.1)
    "baseline", "motion_guided", "amg", "hw", "delta", "fwm", "ld", "fwm_ld", "hw_ld", "fwm_hw_ld", "combo",
    "spectral", "ltc", "ac", "ac_hw", "fac",
    # single-dataset regime (docs/paper.md §3.2)
    "kinematic", "kinematic_0_1", "kinematic_accel", "kinematic_huber", "kinematic_split", "kinematic_anneal",
    "sigreg", "sigreg_no_ema", "hamiltonian", "velgate", "future_predictive", "motion_future",
}
# Small-scale objectives (issue 23), not rows of the study.
SMALL_SCALE_ROWS = {"sigreg_small", "lejepa", "lejepa_future", "vicreg", "vicreg_future", "random_teacher"}


def terms_of(name):
    return {t.key: (t.name, t.coeff, dict(t.params)) for t in VARIANTS[name].terms}


def test_registry_has_every_row_of_the_study():
    assert set(VARIANTS) == STUDY_ROWS | SMALL_SCALE_ROWS


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_builds_the_terms_it_lists(name):
    """The objective built from a registry row holds exactly its terms: the registered kind of each, its
    coefficient, its parameters (those the row sets, the kind's defaults for the rest), and no schedule
    other than 1 at step 0; its mask generator exists."""
    variant = VARIANTS[name]
    assert variant.mask_generator in MASKING_REGISTRY
    objective = build_objective(variant, feat_dim=16)
    assert list(objective.terms) == [term.key for term in variant.terms]
    for term in variant.terms:
        module = objective.terms[term.key]
        assert type(module) is TERM_KINDS[term.name], (term, type(module))
        assert objective.coeffs[term.key] == term.coeff
        defaults = TERM_KINDS[term.name].Params()
        assert module.params == parse_params(TERM_KINDS[term.name].Params, term.params, term.name)
        for field in dataclasses.fields(defaults):
            expected = term.params.get(field.name, getattr(defaults, field.name))
            assert getattr(module.params, field.name) == expected, (term.key, field.name)
    assert objective.effective_coeffs(0) == {term.key: term.coeff for term in variant.terms}


def test_coefficients_follow_the_released_configs():
    fwm = {"fwm_static": ("fwm_static", 0.05, {"app_ratio": 0.5}), "fwm_orth": ("fwm_orth", 0.01, {"app_ratio": 0.5})}
    assert terms_of("hw") == {"hw": ("hw", 0.3, {"tau": 1.0})}
    assert terms_of("delta") == {"delta": ("delta", 0.5, {})}
    assert terms_of("fwm") == fwm
    assert terms_of("fwm_hw_ld") == {**fwm, "hw": ("hw", 1.0, {"tau": 1.0}),
                                     "ld": ("ld", 1.0, {"input": "dyn", "hidden_dim": 256, "hard_weighted": True,
                                                        "tau": 1.0, "weight_scope": "batch"})}
    assert terms_of("hw_ld")["hw"][1] == 1.0 and terms_of("hw_ld")["ld"][2]["hard_weighted"]
    assert terms_of("hw_ld")["ld"][2]["weight_scope"] == "batch"  # the released code's batch-wide softmax
    assert terms_of("ltc") == {"ltc": ("ltc", 0.5, {"margin": 0.5})}
    assert terms_of("fac")["ac"][2]["input"] == "dyn"
    assert terms_of("kinematic")["kinematic"][1] == 1.0
    assert terms_of("kinematic_split")["kinematic"][2] == {"order": 2, "dim_fraction": 0.5}
    assert VARIANTS["combo"].mask_generator == "amg"
    assert VARIANTS["motion_future"].mask_generator == "motion_future"
    no_ema = {n for n, v in VARIANTS.items() if v.disable_ema}
    assert no_ema == ({n for n in STUDY_ROWS if n.startswith("kinematic")} | {"sigreg_no_ema"}
                      | {n for n in SMALL_SCALE_ROWS if n != "random_teacher"})
    assert all(v.prediction_weight == 1.0 and not v.frozen_target for n, v in VARIANTS.items() if n in STUDY_ROWS)


def test_recipe_can_list_terms_directly():
    variant = resolve_variant({"name": "mine", "mask_generator": "amg",
                               "terms": [{"name": "hw", "coeff": 0.2, "params": {"tau": 0.5}},
                                         {"name": "delta", "coeff": 1}]})
    assert variant.terms == (Term("hw", 0.2, {"tau": 0.5}), Term("delta", 1.0, {}))
    assert variant.mask_generator == "amg" and not variant.disable_ema
    objective = build_objective(variant, feat_dim=8)
    assert objective.effective_coeffs(0) == {"hw": 0.2, "delta": 1.0}


def test_registry_errors_name_the_problem():
    with pytest.raises(KeyError, match="unknown objective variant"):
        resolve_variant("fwm_hw_ld_typo")
    with pytest.raises(ValueError, match="unknown key"):
        resolve_variant({"terms": [], "mask": "amg"})
    with pytest.raises(KeyError, match="unknown term"):
        build_objective({"terms": [{"name": "nope"}]}, feat_dim=8)
    with pytest.raises(ValueError, match="would train nothing"):
        build_objective({"terms": [{"name": "kinematic"}]}, feat_dim=8)  # EMA on: h is detached
    with pytest.raises(ValueError, match="share the loss key"):
        Variant("twice", (Term("hw"), Term("hw", 0.5)))
    Variant("twice", (Term("hw"), Term("hw", 0.5, label="hw_strong")))
