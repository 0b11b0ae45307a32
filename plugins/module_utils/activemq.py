"""Sizing of an ActiveMQ Classic broker from its host: JVM heap and systemUsage limits.

Plain Python with no Ansible import (see plugins/filter/fleet.py). Errors are ValueErrors whose
message names the variable the user has to change.
"""

from __future__ import annotations

import math

# KahaDB (the message store) and the temp store (non-persistent messages paged out of memory)
# both write journal files of 32 MB. A limit below two files means the store refuses messages
# as soon as it rolls over to a second file, and the broker warns at start that it "will not
# accept any data"; 64 MB is the smallest limit that is of any use.
MIN_STORE_MB = 64
MIN_TEMP_MB = 64
# Below this the broker does not boot with its own thread pools, caches and KahaDB index.
MIN_HEAP_MB = 128


def heap_mb(
    host_memory_mb, heap_override_mb=None, fraction=0.25, floor_mb=256, ceiling_mb=4096
) -> int:
    """The JVM heap (``-Xms`` = ``-Xmx``) of the broker, in MB.

    ``activemq_heap_mb`` (``heap_override_mb``) wins when set, but it may not exceed the host's
    RAM. Otherwise ``fraction`` of the RAM, within ``floor_mb``-``ceiling_mb``, and never more
    than the RAM itself. A quarter of the RAM is the JVM's own default maximum heap: the rest is
    left to the JVM's off-heap memory (metaspace, thread stacks, direct buffers), the page cache
    that KahaDB reads through, and to workers on the same host. 4 GB is plenty for a broker whose
    messages are paged to the store; a bigger heap mainly lengthens GC pauses.
    """
    if not _is_number(host_memory_mb) or host_memory_mb <= 0:
        raise ValueError(f"the host's memory must be a number of MB > 0, got {host_memory_mb!r}")
    if heap_override_mb not in (None, ""):
        heap_override_mb = _whole_mb("activemq_heap_mb", heap_override_mb, MIN_HEAP_MB)
        if heap_override_mb > host_memory_mb:
            raise ValueError(
                f"activemq_heap_mb ({heap_override_mb}) exceeds the host's RAM "
                f"({host_memory_mb} MB)"
            )
        return heap_override_mb
    share = _number(fraction)
    if share is None or not 0.05 <= share <= 0.75:
        raise ValueError(f"activemq_heap_fraction must be within 0.05-0.75, got {fraction!r}")
    if floor_mb > ceiling_mb:
        raise ValueError(f"the heap floor ({floor_mb} MB) is above its ceiling ({ceiling_mb} MB)")
    heap = min(max(math.floor(host_memory_mb * share), floor_mb), ceiling_mb)
    return int(min(heap, host_memory_mb))


def broker_limits(
    heap_mb, disk_mb, memory_percent=70, store_limit_mb=None, temp_limit_mb=None
) -> dict:
    """The broker's ``systemUsage`` limits, in MB: ``memory_mb``, ``store_mb``, ``temp_mb``.

    - ``memory_mb``: ``memory_percent`` of the heap, for messages held in memory; past it,
      producers are refused (sendFailIfNoSpace). 70 is ActiveMQ's own default
      (percentOfJvmHeap); the rest of the heap is the broker's working memory.
    - ``store_mb``: ``activemq_store_limit_mb``, or half of ``disk_mb``: persistent messages,
      leaving the other half to the temp store, logs and whatever else shares the disk.
    - ``temp_mb``: ``activemq_temp_limit_mb``, or a tenth of ``disk_mb``: non-persistent
      messages paged out of memory, which a work queue of persistent jobs hardly uses.

    ``disk_mb`` is the size of the filesystem holding the data directory. Its size, not its
    free space: free space moves all the time, and a new limit would rewrite activemq.xml and
    restart the broker on every run. Where other data fills the disk, the broker itself lowers
    the store limit to the space it finds at start, and logs it. Every limit is at least 64 MB.
    """
    if not _is_number(heap_mb) or heap_mb <= 0:
        raise ValueError(f"activemq_heap_mb must be a number of MB > 0, got {heap_mb!r}")
    if not _is_number(disk_mb) or disk_mb < 0:
        raise ValueError(f"the data directory's disk size must be >= 0 MB, got {disk_mb!r}")
    percent = _number(memory_percent)
    if percent is None or not 10 <= percent <= 90:
        raise ValueError(f"activemq_memory_percent must be within 10-90, got {memory_percent!r}")
    if store_limit_mb in (None, ""):
        store = max(MIN_STORE_MB, math.floor(disk_mb / 2))
    else:
        store = _given_limit("activemq_store_limit_mb", store_limit_mb, disk_mb, MIN_STORE_MB)
    if temp_limit_mb in (None, ""):
        temp = max(MIN_TEMP_MB, math.floor(disk_mb / 10))
    else:
        temp = _given_limit("activemq_temp_limit_mb", temp_limit_mb, disk_mb, MIN_TEMP_MB)
    if store + temp > disk_mb:
        raise ValueError(
            f"the store ({store} MB, activemq_store_limit_mb) and the temp store ({temp} MB, "
            f"activemq_temp_limit_mb) together need more than the {math.floor(disk_mb)} MB "
            f"disk of the ActiveMQ data directory (at least {MIN_STORE_MB + MIN_TEMP_MB} MB)"
        )
    return {
        "memory_mb": max(1, math.floor(heap_mb * percent / 100)),
        "store_mb": store,
        "temp_mb": temp,
    }


def _given_limit(name, given, disk_mb, minimum) -> int:
    given = _whole_mb(name, given, minimum)
    if given > disk_mb:
        raise ValueError(
            f"{name} ({given} MB) is larger than the disk of the ActiveMQ data "
            f"directory ({math.floor(disk_mb)} MB)"
        )
    return given


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value):
    """``value`` as a number, or None; a numeric string (an extra var given with -e) counts."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value if _is_number(value) else None


def _whole_mb(name, value, minimum) -> int:
    """``value`` as an integer of at least ``minimum`` MB; digits in a string (an extra var
    given with -e) count as an integer."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a whole number of MB >= {minimum}, got {value!r}")
    return value
