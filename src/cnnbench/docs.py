"""The README's option table, generated from the option declarations (``cnnbench.config``).

``python -m cnnbench.docs`` prints it; ``python scripts/update_readme.py`` writes it into README.md
between its ``<!-- train-options -->`` markers; a test fails when the two differ.
"""

from __future__ import annotations

from cnnbench.config import GROUPS, OPTIONS, TrainOption

BEGIN, END = "<!-- train-options -->", "<!-- /train-options -->"
TITLES = {"model": "Model", "data": "Data", "optimisation": "Optimisation", "run": "Run and tracking", "artifacts": "Artifacts"}
# Command-line helpers that are not config fields, listed with the group they belong to.
EXTRAS = {
    "model": [("`--model-option KEY=VALUE`", "", "a model's declared option (repeatable; `cnnbench info MODEL` lists them), logged as `model.KEY`"),
              ("`--kernel-size N\\|auto`", "the model's", "shorthand for `--model-option kernel_size=N`")],
    "data": [("`--dataset-option KEY=VALUE`", "", "a dataset's declared option, logged as `data.KEY`")],
    "run": [("`--config FILE`", "", "a run's `config.json`; flags given with it override it"),
            ("`--resume RUN_ID`", "", "continue an interrupted run in place (with `--tracking-uri`/`--quiet` only)")],
}


def _flag(o: TrainOption) -> str:
    if o.type == "bool":
        return f"`{o.flag}` / `--no-{o.flag[2:]}`"
    value = o.metavar or ("|".join(o.choices) if o.choices else {"int": "N", "float": "X", "str": "TEXT"}[o.type])
    return f"`{o.flag} {value}`".replace("|", "\\|")


def _default(o: TrainOption) -> str:
    if o.default is None:
        return ""
    if o.type == "bool":
        return "on" if o.default else "off"
    return f"`{o.default}`"


def _notes(o: TrainOption) -> str:
    notes = []
    if not o.vary:
        notes.append("not varied by studies/tune")
    if o.param:
        notes.append("logged" if o.applies is None else "logged when it applies")
    return "; ".join(notes)


def option_table() -> str:
    """Markdown: one table per help group, every declared option (flag, default, meaning, notes)."""
    lines: list[str] = []
    for group in GROUPS:
        lines += [f"**{TITLES[group]}**", "", "| option | default | meaning | |", "| --- | --- | --- | --- |"]
        for o in OPTIONS.values():
            if o.group == group:
                lines.append(f"| {_flag(o)} | {_default(o)} | {o.help.replace('|', chr(92) + '|')} | {_notes(o)} |")
        for flag, default, meaning in EXTRAS.get(group, []):
            lines.append(f"| {flag} | {default} | {meaning} | |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`option_table`."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README has no {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{option_table()}{END}{tail}"


if __name__ == "__main__":  # pragma: no cover
    print(option_table(), end="")
