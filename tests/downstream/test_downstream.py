"""Downstream fine-tuning: initialisations, splits and few-shot subsets, tiny end-to-end runs on CPU."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torchvision

from adam_ext.cli import build_parser
from adam_ext.data.synthetic import generate
from adam_ext.downstream import FinetuneConfig, few_shot, finetune, holdout, load_encoder, open_splits
from adam_ext.downstream.protocol import load_finetune_config
from adam_ext.downstream.segmentation import SegmentationTask
from adam_ext.models import MoCo, build_backbone

SCR_MASKS = ["heart", "left clavicle", "right clavicle"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """24 synthetic 64-px radiographs: ChestX-ray14 layout at the root, SCR layout under scr/."""
    return generate(tmp_path_factory.mktemp("synth"), 24, size=64, workers=1, progress=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One resnet18 file per layout: torchvision, adam_ext pretraining, official Adam-v1."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(tv, folder / "tv.pth")
    moco = MoCo("resnet18", dim=8, K=16).state_dict()
    torch.save(
        {
            "kind": "adam_ext.pretrain",
            "version": 1,
            "model": moco,
            "config": {"model": {"backbone": "resnet18", "dim": 8, "K": 16}},
        },
        folder / "adam.pt",
    )
    official = {"module." + k: (v.t().contiguous() if k == "queue" else v) for k, v in moco.items()}
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": official}, folder / "official.pth.tar")
    torch.save({"foo": torch.zeros(3)}, folder / "nothing.pt")
    return {
        "tv": (folder / "tv.pth", tv),
        "adam": (folder / "adam.pt", moco),
        "official": (folder / "official.pth.tar", moco),
        "nothing": folder / "nothing.pt",
    }


def _trunk_equal(encoder, reference: dict, prefix: str = "") -> bool:
    own = encoder.state_dict()
    return all(torch.equal(own[k], reference[prefix + k]) for k in own)


# ------------------------------------------------------------------------------------ initialisations


def test_random_init_loads_nothing():
    trunk, _ = build_backbone("resnet18")
    report = load_encoder(trunk, "random", "resnet18")
    assert report.kind == "random" and report.loaded == [] and "random" in report.summary()


@pytest.mark.parametrize(
    "layout, spec", [("tv", "imagenet:{}"), ("tv", "{}"), ("adam", "{}"), ("official", "{}")]
)
def test_each_checkpoint_layout_loads_the_whole_trunk(checkpoints, layout, spec):
    path, reference = checkpoints[layout]
    trunk, _ = build_backbone("resnet18")
    report = load_encoder(trunk, spec.format(path), "resnet18")
    prefix = "" if layout == "tv" else "encoder_q."
    assert _trunk_equal(trunk, reference, prefix)
    assert report.missing == [] and len(report.loaded) == len(trunk.state_dict())
    assert report.source == {"tv": "torchvision", "adam": "adam_ext", "official": "official"}[layout]
    if layout != "tv":  # head, key encoder and queue are reported as not used
        assert any(k.startswith("encoder_k.") for k in report.unused) and "queue" in report.unused
    assert f"loaded {len(report.loaded)}/{len(report.loaded)} encoder tensors" in report.summary()


def test_checkpoint_loads_into_the_unet_encoder(checkpoints, synth):
    from adam_ext.data.registry import open_dataset

    path, moco = checkpoints["official"]
    task = SegmentationTask(open_dataset("scr", synth / "scr"), "resnet18", 64, SCR_MASKS)
    model, encoder = task.build_model()
    load_encoder(encoder, str(path), "resnet18")
    assert encoder is model.encoder and _trunk_equal(encoder, moco, "encoder_q.")


def test_bad_initialisations_are_errors_not_random_starts(checkpoints):
    trunk, _ = build_backbone("resnet18")
    with pytest.raises(ValueError, match="init .*nothing.pt.* cannot be loaded: .*no recognisable keys"):
        load_encoder(trunk, str(checkpoints["nothing"]), "resnet18")
    with pytest.raises(ValueError, match="holds a resnet18 encoder, but arch is resnet34"):
        load_encoder(build_backbone("resnet34")[0], str(checkpoints["adam"][0]), "resnet34")
    with pytest.raises(
        ValueError, match="must be a torchvision ImageNet state dict, got a adam_ext checkpoint"
    ):
        load_encoder(trunk, f"imagenet:{checkpoints['adam'][0]}", "resnet18")
    with pytest.raises(FileNotFoundError):
        load_encoder(trunk, "/nonexistent/weights.pt", "resnet18")
    with pytest.raises(ValueError, match="imagenet:PATH"):
        load_encoder(trunk, "imagenet:", "resnet18")


# ------------------------------------------------------------------------------------ splits


def test_holdout_and_few_shot_are_seeded_and_disjoint():
    kept, held = holdout(50, 0.1, seed=3)
    assert len(held) == 5 and sorted(kept + held) == list(range(50))
    assert holdout(50, 0.1, seed=3) == (kept, held) and holdout(50, 0.1, seed=4) != (kept, held)
    shots = few_shot(kept, 8, seed=3)
    assert shots == few_shot(list(reversed(kept)), 8, seed=3)  # independent of the pool's order
    assert set(shots) <= set(kept) and not set(shots) & set(held)
    assert few_shot(kept, 8, seed=4) != shots
    with pytest.raises(ValueError, match="shots must be at most the 45"):
        few_shot(kept, 46, seed=0)


@pytest.mark.parametrize("dataset, sub", [("scr", "scr"), ("synthetic", "")])
def test_few_shot_subsets_are_disjoint_from_validation_and_test(synth, dataset, sub):
    cfg = FinetuneConfig(
        task="seg" if dataset == "scr" else "cls",
        dataset=dataset,
        root=str(synth / sub),
        shots=4,
        out="unused",
    ).resolved()
    a, b, c = open_splits(cfg, 0), open_splits(cfg, 0), open_splits(cfg, 1)
    assert a.train_idx == b.train_idx and a.val_idx == b.val_idx and len(a.train_idx) == 4
    assert (a.train_idx, a.val_idx) != (c.train_idx, c.val_idx)
    train = {a.train.image_keys()[i] for i in a.train_idx}
    val = {a.val.image_keys()[i] for i in a.val_idx}
    test = set(a.test.image_keys())
    assert train and val and test and not train & val and not train & test and not val & test


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="lr must be > 0 or null, got -1"):
        load_finetune_config(None, ["lr=-1", "root=x"])
    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        load_finetune_config(None, ["learning_rate=0.1"])
    with pytest.raises(ValueError, match="size must be a multiple of 32"):
        SegmentationTask(_FakeReader(), "resnet18", 48)
    with pytest.raises(ValueError, match=r"masks must be a non-empty subset of \('heart',\)"):
        SegmentationTask(_FakeReader(), "resnet18", 64, ["lungs"])


class _FakeReader:
    mask_names = ("heart",)


# ------------------------------------------------------------------------------------ end to end


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_classification_end_to_end(synth, tmp_path):
    cfg = FinetuneConfig(
        task="cls",
        dataset="synthetic",
        root=str(synth),
        arch="resnet18",
        size=32,
        epochs=3,
        batch_size=8,
        workers=0,
        lr=1e-3,
        out=str(tmp_path / "cls"),
    )
    result = finetune(cfg, progress=False)
    run = result["runs"][0]
    losses = [h["train_loss"] for h in run["history"]]
    # the code trained (one finite loss an epoch, the weights moved between epochs); how far a 3-epoch run
    # gets is what it learned, which differs between machines, so it is not asserted
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and len(set(losses)) == 3
    assert set(run["test"]) >= {"mean_auc", "auc/Cardiomegaly"}
    n_test = len((synth / "test_list.txt").read_text().split())
    assert run["n_train"] + run["n_val"] == 24 - n_test and run["n_test"] == n_test > 0
    body = _strict_json(tmp_path / "cls" / "results.json")
    assert body["summary"]["mean_auc"]["n"] in (0, 1) and body["config"]["size"] == 32
    assert (tmp_path / "cls" / "curves.png").stat().st_size > 0
    assert "| mean_auc |" in (tmp_path / "cls" / "results.md").read_text()
    saved = torch.load(tmp_path / "cls" / "seed0" / "best.pt", weights_only=True)
    assert saved["kind"] == "adam_ext.finetune" and saved["epoch"] == run["best_epoch"]
    rows = [json.loads(line) for line in (tmp_path / "cls" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_segmentation_end_to_end(synth, tmp_path, checkpoints):
    cfg = FinetuneConfig(
        task="seg",
        dataset="scr",
        root=str(synth / "scr"),
        arch="resnet18",
        size=32,
        epochs=3,
        batch_size=4,
        workers=0,
        lr=1e-3,
        masks=SCR_MASKS,
        init=str(checkpoints["adam"][0]),
        out=str(tmp_path / "seg"),
        save_weights=False,
    )
    result = finetune(cfg, progress=False)
    run = result["runs"][0]
    losses = [h["train_loss"] for h in run["history"]]
    # the code trained (one finite loss an epoch, the weights moved between epochs); how far a 3-epoch run
    # gets is what it learned, which differs between machines, so it is not asserted
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and len(set(losses)) == 3
    assert run["init"]["source"] == "adam_ext" and run["init"]["n_loaded"] == 120
    assert 0 <= run["test"]["mean_dice"] <= 1 and set(run["test"]) >= {"dice/heart", "iou/right clavicle"}
    assert run["checkpoint"] is None


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_frozen_encoder_stays_bit_identical_and_the_head_trains(synth, tmp_path, checkpoints, task):
    path, moco = checkpoints["adam"]
    extra = (
        {"dataset": "scr", "root": str(synth / "scr"), "masks": SCR_MASKS}
        if task == "seg"
        else {"dataset": "synthetic", "root": str(synth)}
    )
    cfg = FinetuneConfig(
        task=task,
        arch="resnet18",
        size=32,
        epochs=2,
        batch_size=4,
        workers=0,
        lr=1e-2,
        init=str(path),
        freeze_encoder=True,
        out=str(tmp_path / task),
        **extra,
    )
    run = finetune(cfg, progress=False)["runs"][0]
    state = torch.load(run["checkpoint"], weights_only=True)["model"]
    prefix = "encoder."  # Classifier.encoder and the U-Net's encoder
    encoder = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    trunk_keys = [
        k[len("encoder_q.") :]
        for k in moco
        if k.startswith("encoder_q.") and ".fc." not in k and not k.startswith("encoder_q.fc.")
    ]
    assert trunk_keys and set(trunk_keys) <= set(encoder)
    # weights and BN running statistics (eval mode) exactly as loaded
    assert all(torch.equal(encoder[k], moco["encoder_q." + k]) for k in trunk_keys)
    head = [k for k in state if not k.startswith(prefix)]
    initial = {k: v for k, v in _fresh_head_state(task, synth).items()}
    assert any(
        not torch.equal(state[k], initial[k]) for k in head if k in initial and state[k].is_floating_point()
    )
    assert "frozen encoder" in (tmp_path / task / "results.md").read_text()


def _fresh_head_state(task, synth):
    """The head of a newly built model under the run's seed (what training starts from)."""
    from adam_ext.data.registry import open_dataset
    from adam_ext.downstream.protocol import _make_task

    cfg = FinetuneConfig(
        task=task,
        arch="resnet18",
        size=32,
        masks=SCR_MASKS if task == "seg" else None,
        dataset="scr" if task == "seg" else "synthetic",
        root=str(synth / "scr") if task == "seg" else str(synth),
    ).resolved()
    reader = open_dataset(cfg.dataset, cfg.root, split=cfg.train_split)
    torch.manual_seed(0)
    model, _ = _make_task(cfg, reader).build_model()
    return model.state_dict()


def test_freeze_encoder_must_be_a_bool():
    with pytest.raises(ValueError, match="freeze_encoder"):
        FinetuneConfig(task="seg", root="x", freeze_encoder="yes").resolved()


def test_frozen_epochs_keep_the_encoder_as_loaded_then_fine_tune_it(
    synth, tmp_path, checkpoints, monkeypatch
):
    """LP-FT: after each of the first ``frozen_epochs`` epochs the encoder (weights and BN statistics)
    is exactly as loaded while the decoder trains; after the next one it has moved."""
    from adam_ext.downstream import protocol

    path, moco = checkpoints["adam"]
    seen = []
    real = protocol.evaluate

    def recording(model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(protocol, "evaluate", recording)
    cfg = FinetuneConfig(
        task="seg",
        dataset="scr",
        root=str(synth / "scr"),
        masks=SCR_MASKS,
        arch="resnet18",
        size=32,
        epochs=3,
        patience=0,
        batch_size=4,
        workers=0,
        lr=1e-2,
        init=str(path),
        frozen_epochs=2,
        out=str(tmp_path / "lpft"),
        save_weights=False,
    )
    run = finetune(cfg, progress=False)["runs"][0]
    assert len(seen) == 4 and run["epochs_run"] == 3  # 3 validations, then the test
    trunk = [
        k[len("encoder_q.") :]
        for k in moco
        if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc.")
    ]
    for epoch in (1, 2):
        assert all(torch.equal(seen[epoch - 1]["encoder." + k], moco["encoder_q." + k]) for k in trunk), epoch
    moved = [
        k
        for k in trunk
        if seen[2]["encoder." + k].is_floating_point()
        and not torch.equal(seen[2]["encoder." + k], moco["encoder_q." + k])
    ]
    assert any(k.endswith("conv1.weight") for k in moved) and any(k.endswith("running_mean") for k in moved)
    decoder = [k for k in seen[0] if k.startswith("decoder.") and k.endswith(".weight")]
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in decoder)  # the decoder trains while frozen
    assert "encoder frozen for the first 2 epochs (LP-FT)" in (tmp_path / "lpft" / "results.md").read_text()


class _EncoderAndHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 3).double()
        self.head = torch.nn.Linear(3, 2).double()

    def forward(self, x):
        return self.head(self.encoder(x))


def _first_step(cfg: FinetuneConfig) -> tuple[dict, dict]:
    """(start, after one AdamW step) of :class:`_EncoderAndHead`'s parameters under ``cfg``'s groups."""
    from adam_ext.downstream.protocol import _param_groups
    from adam_ext.downstream.training import make_optimizer

    torch.manual_seed(0)
    model = _EncoderAndHead()
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = make_optimizer(cfg, _param_groups(cfg, model, model.encoder))
    model(x).square().mean().backward()
    optimizer.step()
    return start, {k: v.detach().clone() for k, v in model.named_parameters()}


def test_encoder_lr_scale_scales_only_the_encoders_step():
    """AdamW's first step is lr · (sign-like ratio + weight decay · w): scaling the encoder's rate by
    0.1 makes its step exactly 0.1 of the unscaled one (float64) and leaves the head's unchanged."""
    base = FinetuneConfig(task="seg", root="x", lr=1e-2, optimizer="adamw").resolved()
    start, one = _first_step(base)
    _, scaled = _first_step(dataclasses.replace(base, encoder_lr_scale=0.1))
    for name in start:
        step_one, step_scaled = one[name] - start[name], scaled[name] - start[name]
        assert step_one.abs().min() > 0
        if name.startswith("encoder."):
            torch.testing.assert_close(step_scaled, 0.1 * step_one, rtol=1e-9, atol=0)
        else:
            assert torch.equal(step_scaled, step_one)


def test_param_groups_hold_each_trained_parameter_once():
    from adam_ext.downstream.protocol import _param_groups

    model = _EncoderAndHead()
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    cfg = FinetuneConfig(task="seg", root="x", lr=1e-3, encoder_lr_scale=0.3).resolved()
    groups = _param_groups(cfg, model, model.encoder)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(3e-4)]
    assert {id(p) for p in groups[1]["params"]} == encoder_ids
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    # a frozen encoder is left out; one frozen for the first epochs is in (it joins later)
    model.encoder.requires_grad_(False)
    frozen = _param_groups(
        dataclasses.replace(cfg, encoder_lr_scale=1, freeze_encoder=True), model, model.encoder
    )
    assert {id(p) for g in frozen for p in g["params"]} == {id(p) for p in model.head.parameters()}
    lpft = _param_groups(dataclasses.replace(cfg, frozen_epochs=5), model, model.encoder)
    assert {id(p) for p in lpft[1]["params"]} == encoder_ids


@pytest.mark.parametrize(
    "values, message",
    [
        ({"frozen_epochs": -1}, r"frozen_epochs must be an int in \[0, epochs = 100\), got -1"),
        ({"frozen_epochs": 100}, r"frozen_epochs must be an int in \[0, epochs = 100\), got 100"),
        ({"frozen_epochs": 2.5}, r"frozen_epochs must be an int in \[0, epochs = 100\), got 2.5"),
        ({"frozen_epochs": 3, "freeze_encoder": True}, "frozen_epochs must be 0 with freeze_encoder"),
        ({"encoder_lr_scale": 0}, r"encoder_lr_scale must be a number in \(0, 10\], got 0"),
        ({"encoder_lr_scale": -0.1}, r"encoder_lr_scale must be a number in \(0, 10\], got -0.1"),
        ({"encoder_lr_scale": 11}, r"encoder_lr_scale must be a number in \(0, 10\], got 11"),
        ({"encoder_lr_scale": "low"}, r"encoder_lr_scale must be a number in \(0, 10\], got 'low'"),
        ({"encoder_lr_scale": 0.1, "freeze_encoder": True}, "encoder_lr_scale must be 1 with freeze_encoder"),
    ],
)
def test_encoder_recipe_errors_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(task="seg", root="x", **values).resolved()


def test_encoder_recipe_flags_reach_the_config():
    from adam_ext.cli.finetune import _config

    args = build_parser().parse_args(
        ["finetune", "seg", "--data", "x", "--frozen-epochs", "5", "--encoder-lr-scale", "0.1"]
    )
    cfg = _config(args, "seg")
    assert cfg.frozen_epochs == 5 and cfg.encoder_lr_scale == 0.1
    with pytest.raises(ValueError, match="frozen_epochs must be 0 with freeze_encoder"):
        _config(
            build_parser().parse_args(
                ["finetune", "seg", "--data", "x", "--frozen-epochs", "5", "--freeze-encoder"]
            ),
            "seg",
        )


def test_multiclass_segmentation_targets_and_loss(synth):
    from adam_ext.data.registry import open_dataset

    task = SegmentationTask(open_dataset("scr", synth / "scr"), "resnet18", 32, SCR_MASKS, mode="multiclass")
    image, label = task.dataset(open_dataset("scr", synth / "scr"), [0], train=True, seed=0)[0]
    assert image.shape == (3, 32, 32) and label.dtype == torch.int64 and int(label.max()) <= 3
    onehot = torch.nn.functional.one_hot(label[None], 4).permute(0, 3, 1, 2).float() * 20 - 10
    assert task.loss(onehot, label[None]).item() < 0.1  # confident correct logits: ~0 loss
    assert task.metrics(task.collect(onehot, label[None]))["mean_dice"] == 1.0


def test_compare_cli_reports_p_values(synth, tmp_path, checkpoints):
    parser = build_parser()
    out = tmp_path / "cmp"
    args = parser.parse_args(
        [
            "compare",
            "seg",
            "--data",
            str(synth / "scr"),
            "--masks",
            ",".join(SCR_MASKS),
            "--init",
            "random",
            "--init",
            str(checkpoints["official"][0]),
            "--arch",
            "resnet18",
            "--size",
            "32",
            "--epochs",
            "1",
            "--runs",
            "2",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--shots",
            "4",
            "--out",
            str(out),
            "--no-progress",
            "save_weights=false",
            "lr=1e-3",  # YAML 1.1 reads 1e-3 as a string: coerced
        ]
    )
    assert args.func(args) == 0
    body = _strict_json(out / "compare.json")
    assert body["labels"] == ["random", "official"] and body["seeds"] == [0, 1]
    test = body["metrics"]["mean_dice"]["tests"]["official"]
    assert 0 <= test["p"] <= 1 and math.isfinite(test["t"])
    assert body["metrics"]["mean_dice"]["random"]["n"] == 2
    assert "p (official vs random)" in (out / "compare.md").read_text()
    assert (out / "random" / "results.json").is_file() and (out / "official" / "curves.png").is_file()
    args = parser.parse_args(
        ["finetune", "seg", "--data", str(synth / "scr"), "--init", str(checkpoints["nothing"])]
    )
    with pytest.raises(ValueError, match="cannot be loaded"):
        args.func(args)


@pytest.mark.parametrize("extra", [[], ["--epochs", "2", "--frozen-epochs", "1"]], ids=["plain", "lpft"])
def test_torchrun_two_gloo_ranks_evaluate_the_whole_test_set(synth, tmp_path, extra):
    """2 CPU ranks (gloo, 127.0.0.1): the reported test Dice is that of the whole fold2, not of one shard.
    With ``--frozen-epochs`` the DDP wrapper is rebuilt when the encoder joins in."""
    import os
    import socket
    import subprocess
    import sys

    from adam_ext.downstream import evaluate_checkpoint

    script = tmp_path / "run.py"
    script.write_text("import sys\nfrom adam_ext.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(script),
        "finetune",
        "seg",
        "--data",
        str(synth / "scr"),
        "--masks",
        "heart",
        "--arch",
        "resnet18",
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--shots",
        "4",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("adam finetune seg: test mean_dice") == 1  # rank 0 reports
    run = _strict_json(out / "results.json")["runs"][0]
    assert run["n_test"] == 12 and run["epochs_run"] == (2 if extra else 1)
    whole = evaluate_checkpoint(out / "seed0" / "best.pt", device="cpu")
    assert run["test"]["mean_dice"] == pytest.approx(whole["mean_dice"], abs=1e-6)


def test_dice_backend_monai_reaches_the_segmentation_task(seed):
    """FinetuneConfig.dice_backend: the task computes Dice and IoU with MONAI's metrics, equal to ours."""
    g = torch.Generator().manual_seed(seed)
    logits, target = (
        torch.randn(3, 1, 32, 32, generator=g),
        (torch.rand(3, 1, 32, 32, generator=g) > 0.6).float(),
    )
    ours = SegmentationTask(_FakeReader(), "resnet18", 32).collect(logits, target)
    task = SegmentationTask(_FakeReader(), "resnet18", 32, dice_backend="monai")
    assert task.dice_backend == "monai"
    theirs = task.collect(logits, target)
    for key in ("dice", "iou"):
        np.testing.assert_allclose(theirs[key], ours[key], atol=1e-6)
    cfg = FinetuneConfig(task="seg", dataset="scr", root="x", dice_backend="monai", out="unused").resolved()
    assert cfg.dice_backend == "monai"
