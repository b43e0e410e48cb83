"""Learning-rate schedules by name (``config.optimizer.schedule``), optax schedules underneath.

A registered schedule is ``schedule(peak_value, decay_steps, **arguments) -> optax.Schedule``, a
function of the steps after the warmup; `create_schedule` puts the linear warmup of
``config.optimizer.warmup_epochs`` (0 -> peak) in front of it. Registered: ``constant``,
``cosine`` (``cosine(final=0.05)`` ends at 5% of the peak), ``poly`` (nnU-Net's exponent 0.9),
``linear`` and ``one_cycle``; a schedule of your own is an import path
``package.module:function`` or `bts_jax.train.registry.register_schedule`.

``constant`` and ``cosine`` give exactly the rates of the if-chain they replace, so a workdir
resumes with the schedule it started with (`bts_jax.train.setup.log_schedule_change` rebuilds it).
"""

from __future__ import annotations

import optax

from bts_jax.train.registry import SCHEDULES, parse_call, register_schedule

WHERE = "config.optimizer.schedule"


def constant(peak_value: float, decay_steps: int) -> optax.Schedule:
    """The peak rate at every step.

    Args:
      peak_value: the rate.
      decay_steps: unused (steps after the warmup).

    Returns:
      ``optax.constant_schedule(peak_value)``.
    """
    del decay_steps
    return optax.constant_schedule(peak_value)


def cosine(peak_value: float, decay_steps: int, *, final: float = 0.0) -> optax.Schedule:
    """Cosine decay (Loshchilov & Hutter 2017) from the peak to ``final * peak``.

    ``lr(t) = peak * (final + (1 - final) * (1 + cos(pi t / T)) / 2)``, ``T = decay_steps``.

    Args:
      peak_value: the rate at the end of the warmup.
      decay_steps: steps from the peak to the end of training.
      final: the last rate as a fraction of the peak (0 = decays to 0).

    Returns:
      ``optax.cosine_decay_schedule(peak_value, decay_steps, alpha=final)``.
    """
    return optax.cosine_decay_schedule(peak_value, decay_steps, alpha=final)


def poly(
    peak_value: float, decay_steps: int, *, power: float = 0.9, final: float = 0.0
) -> optax.Schedule:
    """Polynomial decay, nnU-Net's ``lr(t) = peak * (1 - t / T) ** 0.9`` (Isensee et al. 2021).

    nnU-Net steps it per epoch; here it moves every step.

    Args:
      peak_value: the rate at the end of the warmup.
      decay_steps: ``T``, steps from the peak to the end of training.
      power: the exponent.
      final: the last rate as a fraction of the peak.

    Returns:
      ``optax.polynomial_schedule`` from ``peak`` to ``final * peak``.
    """
    return optax.polynomial_schedule(peak_value, final * peak_value, power, decay_steps)


def linear(peak_value: float, decay_steps: int, *, final: float = 0.0) -> optax.Schedule:
    """Linear decay from the peak to ``final * peak``.

    Args:
      peak_value: the rate at the end of the warmup.
      decay_steps: steps from the peak to the end of training.
      final: the last rate as a fraction of the peak.

    Returns:
      ``optax.linear_schedule``.
    """
    return optax.linear_schedule(peak_value, final * peak_value, decay_steps)


def one_cycle(
    peak_value: float,
    decay_steps: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> optax.Schedule:
    """The one-cycle policy (Smith & Topin 2019): cosine up to the peak, then cosine down.

    It starts at ``peak / div_factor``, reaches the peak after ``pct_start`` of the steps and
    ends at ``peak / (div_factor * final_div_factor)``; it has its own warm-up, so it is usually
    run with ``warmup_epochs = 0``.

    Args:
      peak_value: the highest rate.
      decay_steps: steps of the whole cycle.
      pct_start: the fraction of the steps spent rising.
      div_factor: peak / initial rate.
      final_div_factor: initial rate / final rate.

    Returns:
      ``optax.cosine_onecycle_schedule``.
    """
    return optax.cosine_onecycle_schedule(
        decay_steps, peak_value, pct_start, div_factor, final_div_factor
    )


register_schedule("constant", constant)
register_schedule("cosine", cosine)
register_schedule("poly", poly)
register_schedule("linear", linear)
register_schedule("one_cycle", one_cycle)


def schedule_names() -> tuple[str, ...]:
    """The registered schedule names, sorted."""
    return SCHEDULES.names()


def bind_schedule(spec: str, where: str = WHERE):
    """The schedule function of a setting, its arguments bound: ``f(peak, decay_steps)``.

    Args:
      spec: ``name``, ``name(key=value)`` or ``package.module:function``.
      where: the setting, for messages.

    Raises:
      ValueError: naming ``where``: malformed text, an unknown name or argument.
    """
    if not isinstance(spec, str):
        raise ValueError(f"{where}={spec!r}: expected a schedule name such as 'cosine'.")
    try:
        call = parse_call(spec)
    except ValueError as error:
        raise ValueError(f"{where}={spec!r}: {error}.") from None
    return SCHEDULES.bind(call, where, spec)


def create_schedule(
    spec: str, peak_value: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    """The run's schedule: a linear warmup from 0 to the peak, then the named schedule.

    Args:
      spec: ``config.optimizer.schedule``.
      peak_value: ``config.optimizer.learning_rate``.
      warmup_steps: steps of the linear warmup (0 = none).
      total_steps: steps of the whole run; the named schedule gets
        ``max(total_steps - warmup_steps, 1)`` of them.

    Returns:
      An optax schedule (step -> rate).
    """
    after = bind_schedule(spec)(peak_value, max(total_steps - warmup_steps, 1))
    if not warmup_steps:
        return after
    # The same join as optax.warmup_cosine_decay_schedule, which gave the cosine runs before.
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_value, warmup_steps), after], [warmup_steps]
    )
