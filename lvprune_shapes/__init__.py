"""The shapes world: lvprune's demo and benchmark setting, built on the library and never imported by it.

- `dataset`: a synthetic shapes VQA set (scenes of coloured shapes on a 3x3 grid; colour, count, position and
  presence questions) in the LLaVA format;
- `processor`: closed-vocabulary processors over its words, for LLaVA-1.5 and a tiny one of every family;
- `reference`: the reference base, a small LLaVA trained from scratch on the set (shipped in
  `assets/reference-base/`);
- `assets`: the tiny random bases and the synthetic data the training script names (`tiny-random`,
  `synthetic-shapes`, `reference`);
- `job`: the main job (`make demo`, `train/train.py`): train a pruner on the reference base, then benchmark it;
- `bench`: `lvprune bench` on the reference base and the shapes test split (`python -m lvprune_shapes.bench`).
"""
