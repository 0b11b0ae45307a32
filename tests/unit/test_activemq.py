"""Unit and property tests for plugins/module_utils/activemq.py."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerfleet import activemq

# --- heap_mb ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host_mb", "expected"),
    [
        (8192, 2048),  # a quarter of the RAM
        (24105, 4096),  # capped at the ceiling
        (512, 256),  # raised to the floor
        (200, 200),  # the floor, but never more than the RAM
    ],
)
def test_heap_is_a_quarter_of_ram_within_floor_and_ceiling(host_mb, expected):
    assert activemq.heap_mb(host_mb) == expected


def test_heap_fraction_floor_and_ceiling_can_be_changed():
    assert activemq.heap_mb(8192, fraction=0.5) == 4096
    assert activemq.heap_mb(8192, fraction=0.5, ceiling_mb=3000) == 3000
    assert activemq.heap_mb(1024, floor_mb=512) == 512


def test_heap_override_wins():
    assert activemq.heap_mb(8192, heap_override_mb=6000) == 6000
    assert activemq.heap_mb(8192, heap_override_mb="1024") == 1024
    assert activemq.heap_mb(8192, heap_override_mb=None) == 2048
    assert activemq.heap_mb(8192, heap_override_mb="") == 2048


def test_heap_override_above_ram_names_the_variable():
    with pytest.raises(ValueError) as error:
        activemq.heap_mb(2048, heap_override_mb=4096)
    assert str(error.value) == "activemq_heap_mb (4096) exceeds the host's RAM (2048 MB)"


@pytest.mark.parametrize("bad", [0, 64, -1, 1.5, True, "lots"])
def test_heap_override_must_be_a_sane_whole_number(bad):
    with pytest.raises(ValueError, match="activemq_heap_mb must be a whole number of MB >= 128"):
        activemq.heap_mb(8192, heap_override_mb=bad)


@pytest.mark.parametrize("bad", [0, 0.01, 0.8, 1, -0.25, "0.9", "much", None, True])
def test_heap_fraction_out_of_range_names_the_variable(bad):
    with pytest.raises(ValueError, match="activemq_heap_fraction must be within 0.05-0.75"):
        activemq.heap_mb(8192, fraction=bad)


@pytest.mark.parametrize("bad", [0, -5, None, "8192"])
def test_heap_needs_the_hosts_memory(bad):
    with pytest.raises(ValueError, match="host's memory"):
        activemq.heap_mb(bad)


def test_heap_floor_above_ceiling_is_refused():
    with pytest.raises(ValueError, match="floor"):
        activemq.heap_mb(8192, floor_mb=5000, ceiling_mb=4096)


@given(
    host=st.integers(min_value=1, max_value=2_000_000),
    fraction=st.floats(min_value=0.05, max_value=0.75),
)
def test_heap_is_never_above_ram_nor_ceiling_and_at_least_floor_when_ram_allows(host, fraction):
    heap = activemq.heap_mb(host, fraction=fraction)
    assert isinstance(heap, int)
    assert heap <= host
    assert heap <= 4096
    assert heap >= min(256, host)


@given(host=st.integers(min_value=1, max_value=2_000_000))
def test_heap_grows_with_ram(host):
    assert activemq.heap_mb(host) <= activemq.heap_mb(host + 1024)


# --- broker_limits ----------------------------------------------------------------------------


def test_limits_from_heap_and_disk_size():
    assert activemq.broker_limits(1024, 10_000) == {
        "memory_mb": 716,  # 70 % of the heap
        "store_mb": 5000,  # half the disk
        "temp_mb": 1000,  # a tenth
    }


def test_limits_use_the_given_values():
    limits = activemq.broker_limits(
        2048, 80_000, memory_percent=50, store_limit_mb=20_000, temp_limit_mb="5000"
    )
    assert limits == {"memory_mb": 1024, "store_mb": 20_000, "temp_mb": 5000}


def test_limits_have_minimums_on_a_small_disk():
    assert activemq.broker_limits(256, 200) == {"memory_mb": 179, "store_mb": 100, "temp_mb": 64}


def test_store_limit_larger_than_the_disk_names_the_variable():
    with pytest.raises(ValueError) as error:
        activemq.broker_limits(1024, 10_000, store_limit_mb=20_000)
    assert "activemq_store_limit_mb (20000 MB) is larger than the disk" in str(error.value)
    assert "(10000 MB)" in str(error.value)


def test_temp_limit_larger_than_the_disk_names_the_variable():
    with pytest.raises(ValueError, match="activemq_temp_limit_mb .12000 MB. is larger than"):
        activemq.broker_limits(1024, 10_000, temp_limit_mb=12_000)


def test_store_and_temp_together_larger_than_the_disk_is_refused():
    with pytest.raises(ValueError, match="together need more than the 10000 MB"):
        activemq.broker_limits(1024, 10_000, store_limit_mb=9_500)
    with pytest.raises(ValueError, match="at least 128 MB"):
        activemq.broker_limits(1024, 100)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"memory_percent": 5}, "activemq_memory_percent must be within 10-90"),
        ({"memory_percent": 95}, "activemq_memory_percent must be within 10-90"),
        ({"store_limit_mb": 10}, "activemq_store_limit_mb must be a whole number of MB >= 64"),
        ({"temp_limit_mb": 1.5}, "activemq_temp_limit_mb must be a whole number of MB >= 64"),
        ({"heap_mb": 0}, "activemq_heap_mb must be a number of MB > 0"),
        ({"disk_mb": -1}, "disk size must be >= 0 MB"),
    ],
)
def test_bad_limits_name_the_variable(keys, expected):
    arguments = {"heap_mb": 1024, "disk_mb": 10_000, **keys}
    with pytest.raises(ValueError, match=expected):
        activemq.broker_limits(**arguments)


@given(
    heap=st.integers(min_value=128, max_value=65_536),
    disk=st.integers(min_value=640, max_value=10_000_000),
    percent=st.integers(min_value=10, max_value=90),
)
def test_derived_limits_fit_the_heap_and_the_disk(heap, disk, percent):
    limits = activemq.broker_limits(heap, disk, memory_percent=percent)
    assert 0 < limits["memory_mb"] <= heap
    assert activemq.MIN_STORE_MB <= limits["store_mb"] <= disk / 2
    assert activemq.MIN_TEMP_MB <= limits["temp_mb"] <= disk / 10


def test_numbers_given_as_extra_vars_strings_are_accepted():
    assert activemq.heap_mb(8192, fraction="0.5") == 4096
    assert activemq.broker_limits(1000, 10_000, memory_percent="50")["memory_mb"] == 500
