"""Which options of the HMLC losses combine (ours; issue 11 item 2).

Per-level temperatures, L_in and the explicit instance term work with every loss type,
``hce_form``, mask, memory bank and ``gather_distributed``, with the exceptions that
:func:`check_combination` refuses with a ValueError:

- ``reference_compatible=True`` reproduces the reference implementation, which has one
  temperature, the L_out form and no instance term (its instance id is one more label
  column that only enters the divisor ``L + 1``).
- ``hierarchy_margin > 0`` with ``supcon_form="in"`` (the margin offsets the L_out
  denominators) or with ``reference_compatible=True``.
- ``supcon_form="in"`` with the per-pair HiConE forms (``hce``/``hmce`` with
  ``hce_form="pair"``, ``"same_pair"`` or ``"anchor_mean"``): they raise the loss of
  each positive pair to a bound, and L_in has no per-pair losses (the positives'
  probabilities are averaged inside the log), so there is nothing to raise.
  ``hce_form="batch_mean"`` constrains the level terms, which L_in has, and ``hmc`` has
  no constraint.
"""

from __future__ import annotations

from typing import Any

from lightly_hmlc.loss._levels import describe_layer_penalty


def check_combination(loss: Any) -> None:
    """Raises a ValueError for options of an HMLC ``loss`` that cannot be combined.

    ``loss`` is an ``HMLCLoss`` (or masked loss) whose options are set and checked one
    by one already; the message says which options clash and why.
    """
    loss_type, hce_form, temperature = loss.loss_type, loss.hce_form, loss.temperature
    supcon_form, instance_weight = loss.supcon_form, loss.instance_weight
    reference_compatible, margin = loss.reference_compatible, loss.hierarchy_margin
    if reference_compatible:
        names = [f"temperature={list(temperature)}"] if isinstance(temperature, tuple) else []
        names += [f"supcon_form={supcon_form!r}"] if supcon_form != "out" else []
        names += [f"instance_weight={instance_weight}"] if instance_weight != 0 else []
        names += [f"hierarchy_margin={margin}"] if margin != 0 else []
        if names:
            raise ValueError(
                f"reference_compatible=True reproduces the reference implementation, which "
                f"has one temperature, the L_out form, an implicit instance level and no "
                f"margin: {', '.join(names)} is not part of it. Use reference_compatible=False."
            )
    if margin > 0 and supcon_form == "in":
        raise ValueError(
            f"hierarchy_margin={margin} (GHMLCLoss' and AHMLCLoss' default is 0.2) is "
            "defined for the L_out form only: use supcon_form='out' with it, or pass "
            "hierarchy_margin=0 with supcon_form='in'."
        )
    if supcon_form == "in" and loss_type != "hmc" and hce_form != "batch_mean":
        raise ValueError(
            f"supcon_form='in' with loss_type={loss_type!r} and hce_form={hce_form!r}: the "
            "per-pair hierarchy constraint raises the loss of each positive pair, but L_in "
            "has no per-pair losses (the positives are averaged inside the log). Use "
            "hce_form='batch_mean' (the constraint on the level terms), loss_type='hmc', "
            "or supcon_form='out'."
        )


def describe_options(loss: Any) -> str:
    """The options an HMLC ``loss`` keeps, as ``print(loss)`` shows them.

    The options of issue 11 item 2 (``supcon_form``, ``instance_weight``) and the
    reference mode's own settings appear only when they are not the defaults.
    """
    settings = [
        f"loss_type={loss.loss_type!r}",
        f"temperature={loss.temperature}",
        f"layer_penalty={describe_layer_penalty(loss.layer_penalty)}",
        f"num_levels={loss.num_levels}",
        f"normalize_weights={loss.normalize_weights}",
        f"hce_form={loss.hce_form!r}",
        f"level_balance={loss.level_balance!r}",
        f"gather_distributed={loss.gather_distributed}",
        f"check_values={loss.check_values}",
    ]
    if loss.supcon_form != "out":
        settings.append(f"supcon_form={loss.supcon_form!r}")
    if loss.instance_weight:
        settings.append(f"instance_weight={loss.instance_weight}")
    if loss.hierarchy_margin:
        settings.append(f"hierarchy_margin={loss.hierarchy_margin}")
    if loss.reference_compatible:  # base_temperature only counts in that mode
        settings += ["reference_compatible=True", f"base_temperature={loss.base_temperature}"]
    return ", ".join(settings)
