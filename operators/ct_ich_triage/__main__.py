"""Entry point: ``python -m hounsfield_operators.ct_ich_triage -i IN -o OUT -m MODELS -w WORKDIR`` (see ``app.py``)."""

from hounsfield_operators.runtime_support import ensure_cuda_runtime_loadable

ensure_cuda_runtime_loadable()

from hounsfield_operators.ct_ich_triage.app import CTICHTriageApp  # noqa: E402 - needs the CUDA runtime preloaded

if __name__ == "__main__":
    CTICHTriageApp().run()
