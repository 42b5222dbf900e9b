"""Folds, fold-safe preprocessing and in-memory batching."""

import numpy as np
import pytest
import torch

from amsaware.data.datamodule import HiggsDataModule, ShuffledBatches, stratified_folds


def test_folds_are_stratified_disjoint_and_cover_every_event(small_table):
    folds = stratified_folds(small_table.label, 3, seed=0)
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(len(small_table)))
    overall = small_table.label.mean()
    for train_index, val_index in folds:
        assert not set(train_index) & set(val_index)
        assert small_table.label[val_index].mean() == pytest.approx(overall, abs=0.01)


def test_folds_depend_on_the_seed_only(small_table):
    a = stratified_folds(small_table.label, 3, seed=1)
    b = stratified_folds(small_table.label, 3, seed=1)
    c = stratified_folds(small_table.label, 3, seed=2)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][1], c[0][1])


def test_preprocessing_is_fitted_on_training_rows_only(small_table):
    train_index, val_index = stratified_folds(small_table.label, 3, seed=0)[0]
    dm = HiggsDataModule(small_table, 64, 0, train_index=train_index, val_index=val_index)
    imputer, scaler = dm.preprocessing[0], dm.preprocessing[1]
    train_features = small_table.features[train_index]
    np.testing.assert_allclose(imputer.statistics_, np.nanmean(train_features, axis=0), rtol=1e-5)
    all_means = np.nanmean(small_table.features, axis=0)
    assert not np.allclose(imputer.statistics_, all_means, rtol=1e-7)
    # Training rows come out standardised; validation rows only approximately.
    x_train = dm.train_tensors[0].numpy()
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-4)
    assert scaler.n_samples_seen_ == len(train_index)
    assert len(dm.val_tensors[0]) == len(val_index)
    assert not torch.isnan(dm.val_tensors[0]).any()


def test_shuffled_batches_cover_each_row_once_per_epoch_in_a_seeded_order():
    rows = torch.arange(10)
    batches = ShuffledBatches((rows, rows * 2), batch_size=4, seed=3)
    assert len(batches) == 3
    first = [b[0] for b in batches]
    second = [b[0] for b in batches]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new order every epoch
    for x, doubled in ShuffledBatches((rows, rows * 2), 4, seed=3):
        assert torch.equal(doubled, x * 2)  # rows stay aligned across tensors
    again = [b[0] for b in ShuffledBatches((rows, rows * 2), 4, seed=3)]
    assert torch.equal(torch.cat(first), torch.cat(again))


def test_full_data_mode_has_no_validation(small_table):
    dm = HiggsDataModule(small_table, 128, 0)
    assert dm.val_tensors is None
    assert dm.val_dataloader() == []
    assert len(dm.train_dataloader()) == -(-len(small_table) // 128)
