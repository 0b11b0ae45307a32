"""bench/drain.py's parts that need no bench host: each drain's own ids, the empty-queue check,
the pipelined publisher of P4's backlog and its confirm bookkeeping, and the broker sampler."""

import json
import threading
import time
import types

import drain
import pytest
from hypothesis import given
from hypothesis import strategies as st

# --- each drain its own ids -------------------------------------------------------------------


def test_each_drain_on_a_host_gets_the_next_number(tmp_path):
    counter = tmp_path / "drains"
    assert [drain.next_drain(counter) for _ in range(3)] == [1, 2, 3]
    assert counter.read_text() == "3"


def test_a_job_goes_out_under_the_drains_id_with_what_the_worker_reads():
    base = 3 * drain.DRAIN_IDS
    body = json.loads(drain.job_body({"id": 17, "seconds": 0.5, "cpu_seconds": 0.1, "at": 2}, base))
    assert body == {"id": 3_000_000_017, "seconds": 0.5, "cpu_seconds": 0.1}


@pytest.mark.parametrize("bad", [0, -1, drain.DRAIN_IDS, "7", 1.5])
def test_job_ids_must_fit_in_a_drains_range(bad):
    drain.check_ids([{"id": 1}, {"id": drain.DRAIN_IDS - 1}])
    with pytest.raises(SystemExit, match="whole numbers"):
        drain.check_ids([{"id": 1}, {"id": bad}])


def test_jobs_of_an_earlier_drain_are_strays_not_this_drains(tmp_path):
    base = 2 * drain.DRAIN_IDS
    (tmp_path / "thumbnails.log").write_text(
        f"{base + 1} 10.000 10.500\n"
        f"{drain.DRAIN_IDS + 1} 10.100 10.200\n"  # job 1 of drain 1, redelivered
        f"{base + 2} 10.500 11.000\n"
    )
    (tmp_path / "reports.low.log").write_text(f"{base + 1} 11.000 11.500\n")
    (tmp_path / "bench-00.out").write_text("consuming thumbnails\n")
    done, strays = drain.read_done(tmp_path, base)
    assert sorted(done) == [
        [1, "reports.low", 11.0, 11.5],
        [1, "thumbnails", 10.0, 10.5],
        [2, "thumbnails", 10.5, 11.0],
    ]
    assert strays == [[drain.DRAIN_IDS + 1, "thumbnails", 10.1, 10.2]]
    assert drain.lines_done(tmp_path) == 4


def test_the_wait_ends_once_every_job_is_done_however_many_lines(tmp_path):
    base = drain.DRAIN_IDS
    log = tmp_path / "q.log"
    log.write_text(f"{base + 1} 1 2\n{base + 1} 2 3\n")  # job 1 twice: two lines, one job
    timer = threading.Timer(0.3, lambda: log.write_text(log.read_text() + f"{base + 2} 3 4\n"))
    timer.start()
    done, strays = drain.wait_until_done(tmp_path, base, 2, timeout=5)
    timer.join()
    assert sorted(row[0] for row in done) == [1, 1, 2] and strays == []
    with pytest.raises(SystemExit, match="timed out: 2 of 3 jobs done"):
        drain.wait_until_done(tmp_path, base, 3, timeout=0.1)


def test_a_drain_refuses_queues_that_hold_messages():
    drain.check_empty({"reports.high": 0, "reports.low": 0})
    with pytest.raises(SystemExit, match=r"not empty .*\{'reports.low': 2\}"):
        drain.check_empty({"reports.high": 0, "reports.low": 2})


# --- confirms ---------------------------------------------------------------------------------


def test_a_multiple_confirm_settles_every_earlier_tag_not_settled_yet():
    confirms = drain.Confirms()
    confirms.published = 10
    assert confirms.settle(3, multiple=False, ack=True) == 1  # out of order
    assert confirms.settle(2, multiple=False, ack=False) == 1
    assert confirms.settle(5, multiple=True, ack=True) == 3  # 1, 4 and 5: 2 and 3 were settled
    assert confirms.settle(4, multiple=False, ack=True) == 0  # again: counted once
    assert (confirms.acked, confirms.nacked, confirms.unconfirmed) == (4, 1, 5)
    assert confirms.settle(10, multiple=True, ack=True) == 5
    assert confirms.unconfirmed == 0 and confirms.first == 11 and not confirms.above
    with pytest.raises(ValueError, match="tag 11, but only 10 published"):
        confirms.settle(11, multiple=False, ack=True)


@given(st.data())
def test_any_order_of_confirms_counts_each_tag_once(data):
    published = data.draw(st.integers(1, 60))
    order = data.draw(st.permutations(range(1, published + 1)))
    confirms = drain.Confirms()
    confirms.published = published
    settled, acks = set(), 0
    for tag in order:
        multiple = data.draw(st.booleans())
        ack = data.draw(st.booleans())
        new = set(range(1, tag + 1)) - settled if multiple else {tag} - settled
        assert confirms.settle(tag, multiple, ack) == len(new)
        settled |= new
        acks += len(new) if ack else 0
    assert (confirms.acked, confirms.nacked) == (acks, published - acks)
    assert confirms.unconfirmed == 0


# --- the pipelined publisher --------------------------------------------------------------------


class FakeAmqp:
    """pika's SelectConnection as the publisher uses it, and a broker behind it that confirms
    `per_confirm` messages at a time (multiple acks), nacks the tags in `nack`, returns those
    in `unroutable` (then acks them, as RabbitMQ does), or stops confirming after `stall`."""

    def __init__(self, per_confirm=7, nack=(), unroutable=(), stall=None):
        self.per_confirm, self.nack, self.unroutable, self.stall = (
            per_confirm,
            nack,
            unroutable,
            stall,
        )
        self.sent, self.most_unconfirmed = [], 0
        self.spec = types.SimpleNamespace(
            Basic=types.SimpleNamespace(Ack=type("Ack", (), {}), Nack=type("Nack", (), {}))
        )
        self.BasicProperties = lambda **kwargs: kwargs
        self.URLParameters = lambda url: url

    def SelectConnection(
        self, parameters, on_open_callback, on_open_error_callback, on_close_callback
    ):  # noqa: N802
        fake = self
        self.is_open, self.stopped, self.timers = True, False, []

        class Channel:
            def add_on_return_callback(self, callback):
                fake.on_return = callback

            def add_on_close_callback(self, callback):
                fake.on_channel_closed = callback

            def confirm_delivery(self, ack_nack_callback, callback):
                fake.on_confirm = ack_nack_callback
                callback(None)

            def basic_publish(self, exchange, queue, body, properties, mandatory):
                assert (exchange, queue, mandatory) == ("", "jobs", True)
                assert properties["delivery_mode"] == 2
                fake.sent.append(body)

        class Connection:
            def channel(self, on_open_callback):
                on_open_callback(Channel())

            def add_on_connection_blocked_callback(self, callback):
                pass

            @property
            def is_open(self):
                return fake.is_open

            def close(self):
                fake.is_open = False
                on_close_callback(self, "closed by the client")

        class IOLoop:
            def call_later(self, delay, callback):
                fake.timers.append(callback)

            def start(self):
                on_open_callback(connection)
                confirmed = 0
                while not fake.stopped:
                    fake.most_unconfirmed = max(fake.most_unconfirmed, len(fake.sent) - confirmed)
                    if fake.stall is not None and confirmed >= fake.stall:
                        fake.timers.pop()()  # nothing more comes: the timeout fires
                        continue
                    confirmed = min(len(fake.sent), confirmed + fake.per_confirm)
                    for tag in range(confirmed - fake.per_confirm + 1, confirmed + 1):
                        if tag in fake.unroutable:
                            fake.on_return(None, None, None, fake.sent[tag - 1])
                    nacked = [t for t in fake.nack if confirmed - fake.per_confirm < t <= confirmed]
                    for tag in nacked:
                        fake.on_confirm(
                            types.SimpleNamespace(method=fake.frame("Nack", tag, False))
                        )
                    fake.on_confirm(
                        types.SimpleNamespace(method=fake.frame("Ack", confirmed, True))
                    )

            def stop(self):
                fake.stopped = True

        connection = Connection()
        connection.ioloop = IOLoop()
        return connection

    def frame(self, kind, tag, multiple):
        method = getattr(self.spec.Basic, kind)()
        method.delivery_tag, method.multiple = tag, multiple
        return method


def bodies(count):
    return [f"job {n}".encode() for n in range(1, count + 1)]


def test_the_backlog_keeps_a_window_of_unconfirmed_messages_and_sends_each_once():
    amqp = FakeAmqp(per_confirm=7)
    result = drain.BacklogPublisher(amqp, "amqp://mq", "jobs", bodies(100), window=20).run()
    assert amqp.sent == bodies(100)  # in order, none twice
    assert amqp.most_unconfirmed == 20
    assert {k: result[k] for k in ("published", "acked", "nacked", "returned")} == {
        "published": 100,
        "acked": 100,
        "nacked": 0,
        "returned": 0,
    }
    assert result["first"] <= result["last"] and not amqp.is_open


def test_nacked_and_returned_messages_are_counted_never_sent_again():
    amqp = FakeAmqp(per_confirm=5, nack=(3, 4), unroutable=(9,))
    result = drain.BacklogPublisher(amqp, "amqp://mq", "jobs", bodies(30), window=10).run()
    assert amqp.sent == bodies(30)
    assert (result["acked"], result["nacked"], result["returned"]) == (28, 2, 1)


def test_a_backlog_the_broker_stops_confirming_fails_at_its_timeout():
    amqp = FakeAmqp(per_confirm=5, stall=10)
    publisher = drain.BacklogPublisher(amqp, "amqp://mq", "jobs", bodies(30), window=10, timeout=9)
    with pytest.raises(SystemExit, match="10 of 30 messages confirmed after 9 s"):
        publisher.run()
    assert len(amqp.sent) == 20 and not amqp.is_open


# --- the broker's memory ------------------------------------------------------------------------


NODES = [
    {
        "name": "rabbit@bench",
        "mem_used": 150_000_000,
        "mem_limit": 3_000_000_000,
        "mem_alarm": False,
    }
]


def test_a_sample_is_the_nodes_memory_and_the_queues_ready_and_unacked():
    queue = {"messages_ready": 900, "messages_unacknowledged": 34}
    assert drain.memory_sample(5.0, NODES, queue) == {
        "time": 5.0,
        "depth": 934,
        "mem_used": 150_000_000,
        "mem_limit": 3_000_000_000,
        "mem_alarm": False,
    }
    assert drain.memory_sample(5.0, NODES, {})["depth"] == 0  # no statistics yet


def test_the_sampler_asks_the_management_api_until_stopped_and_counts_failures(monkeypatch):
    monkeypatch.setattr(drain, "SAMPLE_SECONDS", 0.02)
    asked = []

    def http_json(config, path):
        asked.append(path)
        if len(asked) == 3:
            raise OSError("timed out")
        return 200, NODES if path.startswith("/api/nodes") else {"messages_ready": 5}

    monkeypatch.setattr(drain, "check", types.SimpleNamespace(http_json=http_json))
    sampler = drain.Sampler({"vhost": "/", "url": "http://127.0.0.1:15672"}, "thumbnails")
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    assert sampler.failures == 1 and len(sampler.samples) >= 3
    assert asked[1] == "/api/queues/%2F/thumbnails?columns=messages_ready,messages_unacknowledged"
    assert all(sample["depth"] == 5 for sample in sampler.samples)
