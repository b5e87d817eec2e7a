"""Masked-language-model pretraining speed: the vocabulary head at the chosen positions only
(``lab.transfer.MaskedLanguageModelling``) against the same head at every position, side by side.

    python benchmarks/mlm_head.py [--dataset fortunes_topics] [--steps 150] [--repeats 2]
        [--model-kwargs '{"dim": 64, "mlp_dim": 128}'] [--batch-size 32]

Both train the same token predictor (``PRETRAIN_SOURCES["mlm"]``) from the same initialisation
on the same masking draws through ``lab.train.fit``; the peer differs only in computing the
``(N, L, vocab_size)`` logits of every position and averaging the cross-entropy over the chosen
ones, which gives the same loss (tests/test_text_models.py). The two alternate ``--repeats``
times; the ratio is of training steps per second, compilation excluded.
"""

from __future__ import annotations

import argparse
import json
import os

import jax.numpy as jnp

from lab import data, optim, train, transfer


class EveryPosition(transfer.MaskedLanguageModelling):
    """The peer: logits at all ``L`` positions, the loss averaged over the chosen ones."""

    def loss(self, model, batch, key, objective_state, step):
        x = batch["unlabeled"]["x"]
        inputs, positions, weights = transfer.mask_tokens(key, x, self.vocab_size, rate=self.rate)
        selected = transfer.selected_positions(positions, weights, x.shape[1])
        loss, accuracy = transfer.masked_token_loss(model(inputs), x, selected)
        return loss, {"loss": loss, "masked_accuracy": accuracy}, objective_state


def steps_per_second(objective_type, dataset, config) -> tuple[float, float]:
    architecture = transfer.Architecture(
        config.model, tuple(dataset.input_shape), dict(config.model_kwargs), dict(dataset.model_inputs)
    )
    task = transfer.PRETRAIN_SOURCES["mlm"]
    graph, params, model_state = train.Graphs.split(task.module(architecture, config, dataset))
    tx = optim.make_optimizer(config.optimizer, config.learning_rate)
    objective = objective_type(architecture.model_inputs["vocab_size"], config.mask_rate)
    result = train.fit(
        graph, train.create_train_state(params, model_state, tx, config.seed), tx, objective,
        task.pools(jnp.asarray(dataset.x_train), dataset), steps=config.steps, batch_size=config.batch_size,
        progress=False,
    )  # fmt: skip
    return config.steps / result.wall_time_s["train"], float(result.log["loss"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fortunes_topics")
    parser.add_argument("--model", default="text_transformer")
    parser.add_argument("--model-kwargs", type=json.loads, default={"dim": 64, "mlp_dim": 128})
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    dataset = data.load(args.dataset)
    config = transfer.PretrainConfig(
        "mlm", args.dataset, model=args.model, model_kwargs=args.model_kwargs, steps=args.steps,
        batch_size=args.batch_size,
    )  # fmt: skip
    print(f"{args.dataset}: {args.model} {args.model_kwargs}, {args.steps} steps of {args.batch_size} "
          f"sequences of {dataset.input_shape[0]} tokens, vocabulary {dataset.vocab_size}")  # fmt: skip
    for repeat in range(args.repeats):
        measured = {}
        contenders = (("chosen positions", transfer.MaskedLanguageModelling), ("every position", EveryPosition))
        for name, objective_type in contenders:
            measured[name], last_loss = steps_per_second(objective_type, dataset, config)
            print(f"  {name:>16}: {measured[name]:6.2f} steps/s (last loss {last_loss:.4f}); "
                  f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"  ratio {measured['chosen positions'] / measured['every position']:.2f}x")


if __name__ == "__main__":
    main()
