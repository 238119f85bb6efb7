"""The `--out` folder of the commands that write: checked and created before any work."""

from __future__ import annotations

from pathlib import Path

__all__ = ["FIT_OUTPUTS", "DEMO_OUTPUTS", "INTERPRET_OUTPUTS", "OutputExistsError",
           "prepare_output_folder"]

FIT_OUTPUTS = ("gap_report.json", "reconstructions.png", "model.safetensors")
DEMO_OUTPUTS = ("demo.json", "reconstructions.png", "model.safetensors")
INTERPRET_OUTPUTS = ("interpret.json", "clusters.png", "filters*.png")


class OutputExistsError(ValueError):
    """`--out` is an existing file, or a folder that already holds files, and no `--force`."""


def prepare_output_folder(out: str | Path, force: bool, outputs: tuple[str, ...]) -> Path:
    """Check and create the `--out` folder before any work is done.

    Refuses (`OutputExistsError`, nothing written) an existing non-folder, and an existing
    folder holding anything besides the command's own outputs (globs `outputs`) unless `force`.
    Output names that are symbolic links are removed first, so the files are written in the
    folder and never through a link to a file elsewhere.
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise OutputExistsError(f"--out {out} is a broken symbolic link; choose another folder "
                                f"(nothing was written)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is an existing file, not a folder; choose a folder "
                                f"path (nothing was written)")
    if out.is_dir():
        own = {p.name for pattern in outputs for p in out.glob(pattern)}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in own)
        if foreign and not force:
            shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} entries)"
                                              if len(foreign) > 5 else "")
            raise OutputExistsError(
                f"--out {out} already holds files this command does not write ({shown}); "
                f"pass --force to write into it (files named like its outputs are "
                f"overwritten) or choose a new folder. Nothing was written")
        for name in own:
            if (out / name).is_symlink():
                (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputExistsError(f"--out {out}: cannot create the folder ({exc})") from None
    return out
