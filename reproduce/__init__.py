"""`make reproduce` and `make reproduce-finetune`: the whole pipeline with its controls, baselines and report.

- `pipeline.py`: synthetic worlds -> label -> pretrain -> export -> eval for every method, resumable by stage;
- `report.py`, `figures.py`: results.md, the summary keys of results.json and their pictures;
- `expert_load.py`: how an export spreads tokens over its experts, prompt by prompt;
- `run.py`, `finetune.py`: the two scripts the Makefile runs.
"""
