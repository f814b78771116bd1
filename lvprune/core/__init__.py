"""The pruning machinery: what happens to a stock model's forward and generate when a stage pruner and/or a
cache press run on it. It imports no method (`lvprune.methods`); docs/architecture.md walks one `generate()`.

- `pruning.py`: `Pruning` attaches to a model (hooks, attention, generate checks) and runs each call;
- `pruning_state.py`: `PruningState`, what one call knows about which tokens are where; runs the stages;
- `token_slots.py`: `TokenSlots`, where each row or cached slot came from, per KV head;
- `layer_hooks.py`: the decoder-layer hooks; `attention.py`: the attention function over kept slots;
- `pruned_cache.py`: the KV cache whose layers and heads keep different slots;
- `protocols.py`: `StagePruner` and `CachePress`, the two kinds of method; `stages.py`: stage schedules;
- `selection.py`: count and top-k rules; `pruned_loss.py`: the loss over kept rows;
- `generate_checks.py`: `generate()` settings a pruned cache refuses; `stats.py`: `PruningStats`;
- `contract.py`: every assumption about transformers internals, in one place.
"""
