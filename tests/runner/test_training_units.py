"""Units of the training loop: config merging, batching, precision, the GradScaler, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helical_runner.training.batching import is_validation, make_batches, padding_efficiency
from helical_runner.errors import InputError
from helical_runner.training.precision import resolve, select_device
from helical_runner.training.loop import TrainConfig, TrainState, linear_warmup_decay, merge_config


def test_merge_config_keeps_unset_values_and_rejects_bad_ones():
    base = TrainConfig(epochs=2, lr=1e-4)
    merged = merge_config(base, epochs=None, lr=3e-4, batch_size=4)
    assert (merged.epochs, merged.lr, merged.batch_size) == (2, 3e-4, 4)
    with pytest.raises(InputError, match="unknown training setting"):
        merge_config(base, learning_rate=1.0)
    with pytest.raises(InputError, match="epochs must be at least 1"):
        merge_config(base, epochs=0)


def test_batches_cover_every_cell_once_in_random_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 2048, size=1001)
    for bucketed in (True, False):
        batches = make_batches(lengths, 12, np.random.default_rng(1), bucketed)
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == list(range(1001))
        assert all(len(b) <= 12 for b in batches)
    bucketed = make_batches(lengths, 12, np.random.default_rng(1), True)
    # batches are shuffled: their length order is not monotone
    maxima = [lengths[b].max() for b in bucketed]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_length_bucketing_cuts_padding():
    lengths = np.random.default_rng(0).integers(200, 4096, size=2000)
    plain = padding_efficiency(lengths, make_batches(lengths, 12, np.random.default_rng(0), bucketed=False))
    bucketed = padding_efficiency(lengths, make_batches(lengths, 12, np.random.default_rng(0), bucketed=True))
    assert bucketed >= 0.9 > plain


def test_token_budget_batches_many_short_cells_or_few_long_ones():
    lengths = np.random.default_rng(0).integers(200, 4096, size=2000)
    lengths[7] = 9000  # longer than the budget: a batch of its own
    batches = make_batches(lengths, 12, np.random.default_rng(1), tokens_per_batch=16384)
    assert sorted(np.concatenate(batches).tolist()) == list(range(2000))
    padded = [len(b) * lengths[b].max() for b in batches]
    assert all(p <= 16384 for p, b in zip(padded, batches) if len(b) > 1)
    assert [b.tolist() for b in batches if 7 in b] == [[7]]
    sizes = {int(lengths[b].max()) // 1000: len(b) for b in batches}
    assert sizes[0] >= 16 > 12 > sizes[3] >= 4  # short cells share big batches, long ones small
    assert padding_efficiency(lengths, batches) >= 0.9
    maxima = [lengths[b].max() for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_validation_split_is_stable_and_near_its_fraction():
    ids = [f"cell-{i}" for i in range(5000)]
    first, second = is_validation(ids, 0.1), is_validation(list(reversed(ids)), 0.1)
    assert np.array_equal(first, second[::-1])
    assert 0.08 < first.mean() < 0.12


def test_warmup_then_linear_decay():
    factor = linear_warmup_decay(100, 0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(100) == 0.0 and factor(150) == 0.0


def test_learning_rate_follows_cells_trained_whatever_the_batch_sizes(tiny_model):
    from helical_runner.models.geneformer import network as model_io
    from helical_runner.training.precision import Precision
    from helical_runner.training.loop import Trainer

    net = model_io.GeneformerClassifier(model_io.load_encoder(tiny_model), 3, True)
    trainer = Trainer(net, TrainConfig(lr=1e-3, warmup_fraction=0.2), Precision("fp32", torch.device("cpu")),
                      total_cells=100)
    rng = np.random.default_rng(0)
    seen = []
    for size in (5, 15, 30, 50):  # e.g. token-budget batches of longer and shorter cells
        trainer.step([rng.integers(4, 100, size=20) for _ in range(size)], rng.integers(0, 3, size=size))
        seen.append(trainer.lr)
    # warmup over the first 20 cells, then linear decay towards 0 at cell 100, read at each batch's last cell
    assert seen == pytest.approx([1e-3 * 5 / 20, 1e-3, 1e-3 * 51 / 80, 1e-3 * 1 / 80])
    assert trainer.state_dict()["schedule"] == {"cells_done": 100}


def test_device_selection_refuses_cuda_without_a_gpu():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(InputError, match="is not cpu, cuda"):
        select_device("tpu")


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_autocast_runs_matmuls_in_the_requested_precision_on_cpu(name, dtype):
    precision = resolve(name, torch.device("cpu"))
    layer = torch.nn.Linear(8, 8)
    with precision.autocast():
        out = layer(torch.randn(2, 8))
    assert out.dtype == dtype
    assert layer.weight.dtype == torch.float32  # master weights stay fp32: no model.half()
    assert precision.grad_scaler().is_enabled() == (name == "fp16")


def test_grad_scaler_skips_a_step_with_overflowed_gradients_and_backs_off():
    precision = resolve("fp16", torch.device("cpu"))
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = precision.grad_scaler()
    before = layer.weight.detach().clone()
    scale = scaler.get_scale()
    loss = layer(torch.ones(1, 4)).sum() * float("inf")  # an fp16 overflow
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(layer.weight, before)  # the poisoned step was skipped
    assert scaler.get_scale() == scale * 0.5  # and the scale backed off
    optimizer.zero_grad()
    scaler.scale(layer(torch.ones(1, 4)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(layer.weight, before)  # a finite step goes through


def test_checkpoint_state_round_trip_without_pickle(tmp_path):
    from helical_runner.training.checkpoint import CheckpointStore, state_from_dict, state_to_dict
    from helical_runner.data.storage import Location

    state = TrainState(epoch=1, chunk_pos=2, step=40, cells_seen=480, history=[{"loss": 0.5, "step": 40}],
                       step_losses=[0.9, 0.7], step_lrs=[1e-5, 2e-5],
                       val_ids=[np.array([2, 5, 9, 3]), np.array([2, 7, 3])], val_labels=[1, 0])
    store = CheckpointStore(Location(str(tmp_path / "out")), tmp_path / "scratch")
    store.save({"state": state_to_dict(state), "torch_rng": torch.get_rng_state()})
    loaded = state_from_dict(store.load()["state"])  # torch.load(weights_only=True) inside
    assert (loaded.epoch, loaded.chunk_pos, loaded.step, loaded.cells_seen) == (1, 2, 40, 480)
    assert [v.tolist() for v in loaded.val_ids] == [[2, 5, 9, 3], [2, 7, 3]]
    assert loaded.history == state.history
    assert (loaded.step_losses, loaded.step_lrs) == ([0.9, 0.7], [1e-5, 2e-5])  # the curves survive a resume
    assert not list((tmp_path / "out").glob("*.partial")) and not list((tmp_path / "scratch").glob("*.tmp"))


def test_attention_dropout_is_off_by_default_and_settable(tiny_model):
    from helical_runner.models.geneformer import network as model_io

    net = model_io.GeneformerClassifier(model_io.load_encoder(tiny_model), 3, True)
    net.set_attention_dropout(0.1)
    assert all(layer.attention.self.dropout.p == 0.1 for layer in net.encoder.encoder.layer)
    assert TrainConfig().attention_dropout == 0.0
    with pytest.raises(InputError, match="attention dropout"):
        merge_config(TrainConfig(), attention_dropout=1.5)


def test_encoder_trains_without_dropout_by_default_as_helical_does(tiny_model):
    # helical's train() runs the encoder in eval mode; ours trains in train mode with its dropout rates at 0
    from helical_runner.models.geneformer import network as model_io

    torch.manual_seed(0)
    net = model_io.GeneformerClassifier(model_io.load_encoder(tiny_model), 3, True)
    ids = torch.randint(2, net.encoder.config.vocab_size, (2, 40))

    def two_passes():
        with torch.no_grad():
            return [net.encoder(input_ids=ids).last_hidden_state for _ in range(2)]

    net.train()
    assert not torch.equal(*two_passes())  # the saved model's own 0.02
    config = TrainConfig()
    net.set_attention_dropout(config.attention_dropout)
    net.set_hidden_dropout(config.hidden_dropout)
    assert torch.equal(*two_passes())
    net.set_hidden_dropout(0.1)
    assert not torch.equal(*two_passes())
    with pytest.raises(InputError, match="hidden dropout"):
        merge_config(TrainConfig(), hidden_dropout=1.0)


def test_key_padding_mask_gives_the_same_logits_as_transformers_own_mask(tiny_model):
    from helical_runner.models.geneformer import network as model_io
    from helical_runner.training.batching import collate

    torch.manual_seed(0)
    net = model_io.GeneformerClassifier(model_io.load_encoder(tiny_model), 3, True).eval()
    rng = np.random.default_rng(0)
    for lengths in ([40, 33, 27], [30, 30, 30]):  # padded, and no padding (mask None)
        ids, short, lens = collate([rng.integers(4, 100, size=n) for n in lengths], 0, torch.device("cpu"))
        if min(lengths) == max(lengths):
            assert short is None
        else:
            assert short.shape == (3, 1, 1, max(lengths)) and short.dtype == torch.bool
        full = (torch.arange(ids.shape[1]).unsqueeze(0) < lens.unsqueeze(1)).long()  # the [batch, seq] 2D mask
        with torch.no_grad():
            ours = net(ids, short, lens)
            # transformers expands the 2D mask itself: the reference
            hidden = net.encoder(input_ids=ids, attention_mask=full).last_hidden_state
            reference = net.classifier(net.pool(hidden, lens))
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_fused_adamw_steps_as_the_per_tensor_one(tiny_model):
    from helical_runner.models.geneformer import network as model_io
    from helical_runner.training.precision import Precision
    from helical_runner.training.loop import Trainer

    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(model_io.GeneformerClassifier(model_io.load_encoder(tiny_model), 3, True, dropout=0.0))
    cfg = TrainConfig(lr=1e-3, warmup_fraction=0.0)
    fused = Trainer(nets[0], cfg, Precision("fp32", torch.device("cpu")), total_cells=30)
    plain = Trainer(nets[1], cfg, Precision("fp32", torch.device("cpu")), total_cells=30)
    plain.optimizer = torch.optim.AdamW(plain.optimizer.param_groups[0]["params"], lr=1e-3, weight_decay=0.01,
                                        fused=False)
    assert fused.optimizer.defaults["fused"]
    for net in nets:  # the hidden dropout of the tiny model is random: switch it off for a comparison
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    rng = np.random.default_rng(0)
    for _ in range(3):
        ids = [rng.integers(4, 100, size=n) for n in (30, 25, 20)]
        labels = rng.integers(0, 3, size=3)
        assert fused.step(ids, labels)[0] == pytest.approx(plain.step(ids, labels)[0], rel=1e-5)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_first_chunk_is_read_before_the_loop_asks_and_handed_over_once():
    import threading

    from helical_runner.data.dataset import HeadStart

    calls, read = [], threading.Event()

    def load(i: int) -> str:
        calls.append(i)
        read.set()
        return f"chunk {i}"

    early = HeadStart(load, 3)
    assert read.wait(30)  # read while the caller does something else (finetune: loading the model)
    served = early.serve(load)
    assert served(3) == "chunk 3" and calls == [3]  # the early read is used, not repeated
    assert served(3) == "chunk 3" and calls == [3, 3]  # a later epoch reads it again


def test_a_resumed_run_starting_at_another_chunk_reads_that_one():
    from helical_runner.data.dataset import HeadStart

    calls = []
    served = HeadStart(lambda i: calls.append(i) or i, 0).serve(lambda i: calls.append(i) or i)
    assert served(5) == 5 and sorted(calls) == [0, 5]


def test_an_error_of_the_early_read_is_raised_where_the_loop_asks_for_the_chunk():
    from helical_runner.data.dataset import HeadStart

    def load(i: int):
        raise InputError(f"chunk {i} has no obs column 'cell_type'")

    served = HeadStart(load, 2).serve(load)
    with pytest.raises(InputError, match="chunk 2 has no obs column"):
        served(2)
