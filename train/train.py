"""The main job: train an LVPruning pruner with `lvprune.training`, then benchmark it (`lvprune_shapes.job`).

    accelerate launch train/train.py                                     # configs/default.yaml: the reference base
    accelerate launch train/train.py --config configs/tiny-cpu.yaml      # seconds, on CPU
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml \\
        train/train.py --config configs/llava-1.5-7b.yaml --output_dir outputs/llava-1.5-7b-lvpruner

Every setting: `python train/train.py --help` (`lvprune_shapes.job.JobConfig`, which is `lvprune.training.TrainConfig`
plus the shapes world's names and the benchmark).
"""

from lvprune_shapes.job import main

if __name__ == "__main__":
    main()
