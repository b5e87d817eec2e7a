"""lab.memory: the memory limit, its setting, XLA's estimate of a program and the seeds that fit."""

import jax
import jax.numpy as jnp
import pytest

from lab import memory


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000", 1000), ("8GB", 8 * 10**9), ("512 MiB", 512 * 2**20), ("1.5gb", 1_500_000_000), ("2e3", 2000)],
)
def test_sizes_are_bytes_or_numbers_with_a_unit(text, size):
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "8 GiBs", "-1GB", "0", "0.1B"])
def test_a_bad_size_is_refused_naming_it_and_the_allowed_form(text):
    with pytest.raises(ValueError, match=rf"LAB_MEMORY_LIMIT='{text}' is not a memory size; give bytes or a number"):
        memory.parse_size(text)


def test_the_limit_is_the_setting_else_a_fraction_of_the_machine(monkeypatch):
    import os

    cpu = jax.devices("cpu")[0]
    monkeypatch.setenv("LAB_MEMORY_LIMIT", "3GiB")
    assert memory.limit(cpu) == 3 * 2**30
    monkeypatch.delenv("LAB_MEMORY_LIMIT")
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory.limit(cpu) == int(memory.HOST_FRACTION * physical)


def test_compiled_bytes_count_arguments_outputs_and_temporaries():
    x = jax.ShapeDtypeStruct((1000, 250), jnp.float32)  # 1 MB
    copy = jax.jit(lambda a: a * 2.0).lower(x).compile()
    assert memory.compiled_bytes(copy) == 2 * 10**6  # the argument and the (not aliased) output
    donated = jax.jit(lambda a: a * 2.0, donate_argnums=0).lower(x).compile()
    assert memory.compiled_bytes(donated) == 10**6  # the output reuses the donated argument


@pytest.mark.parametrize(
    ("needed", "needed_by_one", "allowed", "size"),
    [(100, 30, 100, 8), (100, 30, 99, 7), (100, 30, 60, 4), (100, 30, 29, 0), (100, 30, 30, 1)],
)
def test_seeds_per_group_fit_the_limit_with_the_shared_data_once(needed, needed_by_one, allowed, size):
    # 8 seeds: 20 bytes of data shared by all, 10 per seed.
    assert memory.seeds_per_group(8, needed, needed_by_one, allowed) == size
    assert 20 + size * 10 <= allowed or size == 0
    assert 20 + (size + 1) * 10 > allowed or size == 8


def test_a_single_seed_past_the_limit_does_not_fit():
    assert memory.seeds_per_group(1, 50, 50, 49) == 0 and memory.seeds_per_group(1, 50, 50, 50) == 1


def test_compiled_bytes_without_arguments_and_tree_bytes():
    x = jax.ShapeDtypeStruct((1000, 250), jnp.float32)
    copy = jax.jit(lambda a: a * 2.0).lower(x).compile()
    assert memory.compiled_bytes(copy, arguments=False) == 10**6  # the output alone
    assert memory.tree_bytes({"a": x, "b": [jnp.zeros(3, jnp.int8)]}) == 10**6 + 3
