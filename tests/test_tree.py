"""The draft tree's pure tensor logic."""

from __future__ import annotations

import torch

from ltd.tree import DraftTree


def logits_with(best: list[int], vocab: int = 16) -> torch.Tensor:
    row = torch.full((vocab,), -10.0)
    for rank, tok in enumerate(best):
        row[tok] = 5.0 - rank
    return row


def test_expansions_keep_top_k_and_select_closes_over_ancestors():
    tree = DraftTree(2, torch.device("cpu"))
    tree.add_root_children(logits_with([3, 4]))
    assert tree.tokens.tolist() == [3, 4] and tree.depth == 1
    tokens, mask = tree.feed_frontier()
    assert tokens.tolist() == [3, 4] and mask.tolist() == [[True, False], [False, True]]
    tree.add_children(torch.stack([logits_with([5, 6]), logits_with([7, 8])]))
    assert len(tree) == 6 and tree.depth == 2
    assert tree.parents.tolist() == [-1, -1, 0, 0, 1, 1]
    # the new frontier is the best two grandchildren, both under node 0 (3 -> 5, 3 -> 6)
    assert tree.frontier.tolist() == [2, 3]
    tokens, mask = tree.feed_frontier()
    assert mask.tolist() == [[True, False, True, False], [True, False, False, True]]
    for width in range(1, len(tree) + 1):
        chosen = set(tree.select(width).tolist())
        for node in chosen:
            parent = int(tree.parents[node])
            assert parent == -1 or parent in chosen


def test_verify_layout_masks_positions_and_parents():
    tree = DraftTree(2, torch.device("cpu"))
    tree.add_root_children(logits_with([3, 4]))
    tree.feed_frontier()
    tree.add_children(torch.stack([logits_with([5, 6]), logits_with([7, 8])]))
    layout = tree.verify_layout(4)
    n = len(layout.nodes) + 1
    assert layout.ancestors.shape == (n, n)
    assert layout.depths[0] == 0 and layout.parents[0] == -1
    for i in range(1, n):
        assert layout.ancestors[i, 0] and layout.ancestors[i, i]
        p = layout.parents[i]
        assert layout.depths[i] == layout.depths[p] + 1
        # a node sees exactly its ancestors, the root and itself
        expected = {i}
        while p >= 0:
            expected.add(p)
            p = layout.parents[p]
        assert set(layout.ancestors[i].nonzero()[0].tolist()) == expected


def test_restricted_vocabulary_maps_columns_to_token_ids():
    vocab = torch.tensor([10, 11, 12, 13])
    tree = DraftTree(2, torch.device("cpu"), vocab=vocab)
    tree.add_root_children(logits_with([2, 0], vocab=4))
    assert tree.tokens.tolist() == [12, 10]


def test_layout_chooses_exactly_what_select_chooses_even_with_ties():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        tree = DraftTree(3, torch.device("cpu"))
        tree.add_root_children(torch.randint(0, 4, (16,), generator=gen).float())  # few values: many ties
        for _ in range(3):
            tree.feed_frontier()
            tree.add_children(torch.randint(0, 4, (len(tree.frontier), 16), generator=gen).float())
        for width in range(0, len(tree) + 2):
            assert tree.verify_layout(width).nodes == tree.select(width).tolist()
