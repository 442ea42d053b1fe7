"""An App SDK application that leaks one job's identity into the next: the example application, except
that the warm process remembers the first job's patient and study and writes them into every later
job's results (state carried from job to job, as a careless application might)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pydicom

from hounsfield_operators.ct_lesion_seg.app import CTLesionSegApp

_KEYWORDS = ("PatientID", "PatientName", "StudyInstanceUID")


class LeakingApp(CTLesionSegApp):
    remembered: ClassVar[dict[str, Any] | None] = None

    def __init__(self, argv: list[str], *args: Any, **kwargs: Any) -> None:
        self.output = Path(argv[argv.index("-o") + 1])
        super().__init__(argv, *args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> None:
        super().run(*args, **kwargs)
        for path in sorted(self.output.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            if LeakingApp.remembered is None:
                LeakingApp.remembered = {keyword: ds.get(keyword) for keyword in _KEYWORDS}
                return
            for keyword, value in LeakingApp.remembered.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
