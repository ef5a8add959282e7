"""What a run says when it ends: the few lines of its summary, made from the record that
``dnirnn.runs.RunRecord`` writes to ``summary.json`` (the best value and its step, the last
values beside the steps they are of, the curriculum, the checkpoints, what to resume from)."""

from __future__ import annotations


def format_summary(record: dict) -> str:
    """The few lines printed when a run ends."""
    stage, step = record["stage"], record["global_step"]
    lines = [f"dnirnn {stage}: step {step}"
             + (f" ({record['epoch']:g} epochs)" if "epoch" in record else "")
             + (f", checkpoint {record['checkpoint']}" if record.get("checkpoint") else "")]
    best = record.get("best")
    if best:
        lines.append(f"  best {best['metric']} = {best['value']:.4g} at step {best['step']}")
    elif stage.startswith("fit"):
        lines.append("  best: none (no validation ran)")
    lines += last_lines(record)
    cur, scored = record.get("curriculum"), record.get("scored_at")
    if scored:
        at = f", delay {scored['delay']}" if "delay" in scored else ""
        lines.append(f"  scored at length {scored['length']} x repeats {scored['repeats']}"
                     f"{at}: {scored['why']}")
    elif cur and "max_level_solved" in cur:
        delay = (f", max delay solved {cur['max_delay_solved']}, now at delay {cur['delay']}"
                 if cur.get("grow") == "delay" else "")
        lines.append(f"  curriculum: max level solved {cur['max_level_solved']}, "
                     f"now at length {cur.get('length')} x repeats {cur.get('repeats')}{delay}")
    lines.append(f"  run folder: {record['run_dir']}  (summary.json, metrics.csv)")
    ckpts = record.get("checkpoints") or {}
    for name in ("best", "last"):
        if ckpts.get(name):
            at = ckpts.get(f"{name}_step")
            why = ""
            if name == "best" and best and at is not None and at > best["step"]:
                # (the metric peaked between checkpoints: the best one is the first after)
                why = f", the first checkpoint after the best at step {best['step']}"
            lines.append(f"  {name} checkpoint: {ckpts[name]}"
                         + (f" (step {at}{why})" if at is not None else ""))
    if "resume" in record:
        lines.append(resume_line(record, ckpts))
    return "\n".join(lines)


def _values(metrics: dict) -> str:
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                     for k, v in sorted(metrics.items()))


def last_lines(record: dict) -> list[str]:
    """The last values, each beside the step it is of: the training loss is that of the last
    step, the validation's of the last validation, which an interrupted fit may have run
    many steps before. One line when they are of the same step."""
    shown = {k: v for k, v in record["metrics"].items()
             if k.split("/")[0] in ("val", "test") or k == "train/loss"}
    if not shown:
        return []
    step = record["global_step"]
    val_step = (record.get("last") or {}).get("validated_at", step)
    held = {k: v for k, v in shown.items() if k.startswith("val/")}
    if val_step in (step, None) or not held:
        return [f"  last, at step {step}: {_values(shown)}"]
    trained = {k: v for k, v in shown.items() if k not in held}
    lines = [f"  last, at step {step}: {_values(trained)}"] if trained else []
    return lines + [f"  last validation, at step {val_step}: {_values(held)}"]


def resume_line(record: dict, ckpts: dict) -> str:
    """What an interrupted run leaves to resume from, in one line."""
    resume, step = record.get("resume"), record["global_step"]
    if not resume:
        return (f"  nothing can be resumed: no checkpoint was written before the interruption "
                f"(checkpoints come {ckpts.get('cadence') or 'at epoch ends'}); start again")
    lost = step - resume["step"]
    lost = f"; the {lost} step(s) after it are lost" if lost > 0 else ""
    return (f"  resume from step {resume['step']}{lost}: the same command with "
            f"--ckpt_path={resume['checkpoint']}")
