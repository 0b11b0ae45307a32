"""What an operator checks after `ansible-playbook site.yml` with broker_kind activemq: heap,
limits and prefetch as the broker reports them (statistics over STOMP, JMX with its login), no
anonymous access, and the production regression: 750 jobs over five priority levels, 4 workers
polling in the weighted order, all completed, none left in flight, the broker under its memory
limit. Then two fault drills (molecule/conftest.py Drill): a STOMP worker killed mid-job and a
broker restart mid-drain lose nothing."""

import json
import statistics
import time

from conftest import (
    Drill,
    check,
    cron_runs,
    done_ids,
    done_jobs,
    of_group,
    publish,
    running,
    wait_until,
)

from brokerfleet import access, activemq

JMX = "service:jmx:rmi:///jndi/rmi://127.0.0.1:1099/jmxrmi"
JMX_LOGIN = "/etc/activemq/instances-available/main/jmx.password"
LEVELS = ["very_high", "high", "medium", "low", "very_low"]
QUEUES = [f"jobs.{level}" for level in LEVELS]
WORKERS = 4  # fleet_cpus 2 x workers_per_cpu 2 (molecule.yml)
MB = 1024 * 1024

# Prints one attribute of each MBean matching a pattern (composite ones too), logged in with
# the user and password of the file given (none: no credentials), so no password is on argv.
JMX_GET = """
import java.nio.file.*;
import java.util.*;
import javax.management.ObjectName;
import javax.management.openmbean.CompositeData;
import javax.management.remote.*;

public class JmxGet {
    public static void main(String[] a) throws Exception {
        Map<String, Object> login = new HashMap<>();
        if (!a[0].equals("none")) {
            String[] line = Files.readString(Path.of(a[0])).trim().split("\\\\s+");
            login.put(JMXConnector.CREDENTIALS, new String[] {line[0], line[1]});
        }
        try (var c = JMXConnectorFactory.connect(new JMXServiceURL(a[1]), login)) {
            var server = c.getMBeanServerConnection();
            for (ObjectName name : new TreeSet<>(server.queryNames(new ObjectName(a[2]), null))) {
                Object v = server.getAttribute(name, a[3]);
                System.out.println(a.length > 4 ? ((CompositeData) v).get(a[4]) : v);
            }
        }
    }
}
"""

# The broker's statistics plugin over STOMP, through brokerfleet-check's own client.
STATISTICS = """
import importlib.machinery, importlib.util, json, sys
loader = importlib.machinery.SourceFileLoader("check", "/usr/local/sbin/brokerfleet-check")
check = importlib.util.module_from_spec(importlib.util.spec_from_loader("check", loader))
loader.exec_module(check)
client = check.Stomp(json.load(open("/etc/brokerfleet/broker.json")))
print(json.dumps(client.statistics(getattr(check, sys.argv[1]))))
"""


def jmx_get(broker, *arguments, login=JMX_LOGIN):
    broker.check_output(f"test -f /tmp/JmxGet.java || cat > /tmp/JmxGet.java <<'EOF'{JMX_GET}EOF")
    return broker.run(f"java /tmp/JmxGet.java {login} {JMX} " + " ".join(arguments))


def broker_statistics(broker, query):
    return json.loads(broker.check_output(f"python3 -c '{STATISTICS}' {query}"))


def broker_usage(broker):
    (answer,) = broker_statistics(broker, "STATS_BROKER")
    return {
        key: int(answer[key])
        for key in ("memoryLimit", "storeLimit", "tempLimit", "memoryPercentUsage")
    }


def queue_sizes(broker):
    """{queue: {"size": jobs stored, dispatched included, "inflightCount", "consumerCount"}}."""
    keys = ("size", "inflightCount", "consumerCount")
    return {
        answer["destinationName"].removeprefix("queue://"): {key: int(answer[key]) for key in keys}
        for answer in broker_statistics(broker, "STATS_QUEUES")
    }


def test_the_checks_run_from_cron_on_both_hosts_and_see_the_queues(broker, worker):
    assert cron_runs((broker, "broker"), (worker, "workers"))
    code, answer = check(broker, "broker")
    assert (code, answer["status"]) == (0, "OK"), answer
    assert set(answer["broker"]["queues"]) == set(QUEUES)
    assert {q["consumers"] for q in answer["broker"]["queues"].values()} == {WORKERS}
    assert set(answer["broker"]["usage"]) == {"memory", "store", "temp"}


def test_heap_and_limits_are_the_computed_ones(broker):
    memory_mb = int(broker.check_output("awk '/MemTotal/ {print $2}' /proc/meminfo")) // 1024
    heap_mb = activemq.heap_mb(memory_mb)
    disk_mb = int(broker.check_output("df -m --output=size /var/lib/activemq/main | tail -1"))
    limits = activemq.broker_limits(heap_mb, disk_mb)

    heap = jmx_get(broker, "java.lang:type=Memory", "HeapMemoryUsage", "max")
    assert int(heap.stdout) == heap_mb * MB, heap.stderr
    usage = broker_usage(broker)
    assert usage["memoryLimit"] == limits["memory_mb"] * MB
    # Store and temp limits are shares of the disk; where other data leaves less free, the
    # broker lowers them at start to the space it finds (and logs so).
    free_mb = int(broker.check_output("df -m --output=avail /var/lib/activemq/main | tail -1"))
    for name, limit_mb in (("storeLimit", limits["store_mb"]), ("tempLimit", limits["temp_mb"])):
        assert min(limit_mb, free_mb) * MB * 0.9 <= usage[name] <= limit_mb * MB, name


def test_jmx_wants_the_login_only_its_own_user_reads(broker):
    assert broker.check_output(f"stat -c '%U %a' {JMX_LOGIN}") == "activemq 400"
    anonymous = jmx_get(broker, "java.lang:type=Memory", "HeapMemoryUsage", "max", login="none")
    assert anonymous.rc != 0 and "Credentials required" in anonymous.stderr, anonymous.stderr
    assert "brokerfleet-jmx" in broker.check_output(f"cat {JMX_LOGIN}")


def test_jmx_listens_on_loopback_and_the_workers_reach_openwire_and_stomp(broker):
    jmx = broker.check_output("ss -Hltn 'sport = :1099'").split()
    # The JDK's agent listens on an IPv6 socket: [::ffff:127.0.0.1] is IPv4 loopback.
    assert [address for address in jmx if address.endswith(":1099")] in (
        ["127.0.0.1:1099"],
        ["[::ffff:127.0.0.1]:1099"],
    ), jmx
    for port in (61616, 61613):  # a separate worker host: every address (Java shows *)
        listening = broker.check_output(f"ss -Hltn 'sport = :{port}'").split()
        assert {f"*:{port}", f"0.0.0.0:{port}"} & set(listening), listening


def test_each_worker_holds_one_consumer_per_level_with_prefetch_one(broker, worker):
    assert len(of_group(running(worker), "jobs")) == WORKERS
    sizes = queue_sizes(broker)
    for queue in QUEUES:
        assert sizes[queue]["consumerCount"] == WORKERS, queue
        consumers = jmx_get(
            broker,
            "'org.apache.activemq:type=Broker,brokerName=localhost,destinationType=Queue,"
            f"destinationName={queue},endpoint=Consumer,*'",
            "PrefetchSize",
        )
        assert consumers.stdout.split() == ["1"] * WORKERS, (queue, consumers.stderr)
    # JMS clients of this group would pull (prefetch 0); STOMP clients hold one at most.
    # (Their environment is in the group's spec, named by its supervisord programs.)
    spec = worker.check_output(
        "awk '/^command=/ {print $2; exit}' /etc/supervisor/conf.d/brokerfleet-jobs.conf"
    )
    environment = worker.check_output(f"cat {spec}")
    assert "jms.prefetchPolicy.all=0" in environment
    assert "activemq.prefetchSize=1" in environment


# A bare STOMP CONNECT frame: the broker answers CONNECTED or ERROR.
STOMP_LOGIN = """python3 - <<'EOF'
import socket
connection = socket.create_connection(("broker", 61613), timeout=10)
connection.sendall(b"CONNECT\\naccept-version:1.2\\nhost:broker\\n{headers}\\n\\0")
print(connection.recv(4096).split(b"\\n")[0].decode())
EOF"""


# Logs in, subscribes to a queue, prints what the broker answers: RECEIPT, or ERROR and why.
STOMP_SUBSCRIBE = """python3 - <<'EOF'
import socket
connection = socket.create_connection(("broker", 61613), timeout=10)
connection.sendall(b"CONNECT\\naccept-version:1.2\\nhost:broker\\nlogin:{user}\\npasscode:{password}\\n\\n\\0")
connection.recv(4096)
connection.sendall(b"SUBSCRIBE\\nid:1\\ndestination:/queue/{queue}\\nreceipt:1\\n\\n\\0")
answer = connection.recv(4096).decode()
print(answer.split("\\n")[0], [line for line in answer.split("\\n") if line.startswith("message:")])
EOF"""
GROUP_USER = ("jobs-mq", access.group_password("molecule-only-secret", "jobs-mq"))


def test_anonymous_and_wrong_password_connections_are_refused(worker):
    def login(headers):
        return worker.check_output(STOMP_LOGIN.format(headers=headers))

    assert login("") == "ERROR"
    assert login("login:brokerfleet\\npasscode:wrong\\n") == "ERROR"
    assert login("login:brokerfleet\\npasscode:molecule-only-secret\\n") == "CONNECTED"
    assert login(f"login:{GROUP_USER[0]}\\npasscode:{GROUP_USER[1]}\\n") == "CONNECTED"


def test_the_group_user_reads_its_own_queues_and_no_other(worker):
    def subscribe(user, password, queue):
        command = STOMP_SUBSCRIBE.format(user=user, password=password, queue=queue)
        return worker.check_output(command)

    for queue in ("jobs.low", "ActiveMQ.DLQ.Queue.jobs.low"):
        assert subscribe(*GROUP_USER, queue).startswith("RECEIPT"), queue
    refused = subscribe(*GROUP_USER, "reports")
    assert refused.startswith("ERROR") and "not authorized to read" in refused, refused
    assert subscribe("brokerfleet", "molecule-only-secret", "reports").startswith("RECEIPT")
    # The workers of the group log in as that user.
    spec = worker.check_output(
        "awk '/^command=/ {print $2; exit}' /etc/supervisor/conf.d/brokerfleet-jobs.conf"
    )
    assert f"stomp://{GROUP_USER[0]}:{GROUP_USER[1]}@" in worker.check_output(f"cat {spec}")


def test_750_jobs_over_five_levels_all_complete_in_the_weighted_order(broker, worker):
    # The production failure: 4 containers, 750 jobs over five priority queues, ActiveMQ's
    # default prefetch; 36 were processed, then everything stalled.
    for index, level in enumerate(LEVELS):
        publish(worker, "jobs", 150, 0.1, first_id=index * 1000 + 1, level=level)
    peak = 0
    for _ in range(120):
        peak = max(peak, broker_usage(broker)["memoryPercentUsage"])
        if sum(len(done_ids(worker, queue)) for queue in QUEUES) >= 750:
            break
        time.sleep(1)
    for index, queue in enumerate(QUEUES):
        first = index * 1000 + 1
        assert sorted(done_ids(worker, queue)) == list(range(first, first + 150)), queue
    sizes = queue_sizes(broker)
    assert all(sizes[q]["size"] == 0 and sizes[q]["inflightCount"] == 0 for q in QUEUES)
    assert peak < 100
    # Weighted: the more urgent a level, the earlier its jobs ran, though all were queued
    # at once; very_low (weight 0) ran when the others were empty.
    middle = [statistics.median(job[1] for job in done_jobs(worker, q)) for q in QUEUES]
    assert middle == sorted(middle), dict(zip(QUEUES, middle, strict=True))
    print("median start per level, s after the first:", [round(m - middle[0], 1) for m in middle])


def test_a_very_high_job_starts_within_two_job_lengths_behind_a_low_backlog(worker):
    # 60 low jobs of 1 s keep the 4 workers busy for 15 s.
    publish(worker, "jobs", 60, 1, first_id=5001, level="low")
    time.sleep(3)
    submitted = time.time()
    publish(worker, "jobs", 1, 1, first_id=9001, level="very_high")
    assert wait_until(lambda: 9001 in done_ids(worker, "jobs.very_high"), 30)
    [started] = [job[1] for job in done_jobs(worker, "jobs.very_high") if job[0] == 9001]
    assert started - submitted <= 2 * 1
    assert wait_until(lambda: len(done_ids(worker, "jobs.low")) >= 150 + 60, 60)


def test_moving_a_waiting_job_to_another_level_loses_nothing(broker, worker):
    # Workers stopped, so that the jobs wait; the move publishes a confirmed copy, then acks.
    # Holding the check's lock keeps cron's brokerfleet-check from restarting them meanwhile.
    worker.check_output(
        "setsid flock /run/brokerfleet-check-workers.lock sleep 40 </dev/null >/dev/null 2>&1 &"
    )
    time.sleep(2)  # until flock holds it (after any run in progress)
    workers = " ".join(of_group(running(worker), "jobs"))
    worker.check_output(f"supervisorctl stop {workers}")
    try:
        publish(worker, "jobs", 5, 0.1, first_id=7001, level="very_low")
        moved = worker.check_output(
            "brokerfleet-worker move --group jobs --from very_low --to very_high --id 7003"
        )
        assert "moved 1 job" in moved

        def waiting():
            sizes = queue_sizes(broker)
            return sizes["jobs.very_low"]["size"], sizes["jobs.very_high"]["size"]

        assert wait_until(lambda: waiting() == (4, 1), 10), waiting()
        code, answer = check(broker, "broker")
        assert code == 2 and "queue jobs.very_low: 4 jobs waiting and no consumer" in " ".join(
            answer["problems"]
        )
    finally:
        worker.check_output(f"supervisorctl start {workers}")
    assert wait_until(lambda: 7003 in done_ids(worker, "jobs.very_high"), 30)
    rest = [7001, 7002, 7004, 7005]
    assert wait_until(lambda: set(rest) <= set(done_ids(worker, "jobs.very_low")), 30)
    assert 7003 not in done_ids(worker, "jobs.very_low")


def activemq_depth(broker, queue):
    """(waiting, dispatched and not yet acked) jobs of ``queue``."""
    found = queue_sizes(broker).get(queue, {"size": 0, "inflightCount": 0})
    return found["size"] - found["inflightCount"], found["inflightCount"]


def test_a_stomp_worker_killed_mid_job_is_back_and_its_job_done(broker, worker):
    drill = Drill(
        "ActiveMQ: kill -9 a STOMP worker",
        broker,
        worker,
        "jobs",
        40,
        1,
        20_000,
        level="medium",
        depth=activemq_depth,
    )
    drill.fault()
    worker.check_output(f"kill -9 {of_group(running(worker), 'jobs')['jobs-00']}")
    assert drill.finish(lambda: len(of_group(running(worker), "jobs")) == WORKERS, 30) < 10


def test_an_activemq_restart_mid_drain_loses_nothing(broker, worker):
    drill = Drill(
        "ActiveMQ: restart the broker",
        broker,
        worker,
        "jobs",
        60,
        1,
        30_000,
        level="medium",
        depth=activemq_depth,
    )
    drill.fault()
    broker.check_output("service activemq restart")

    def reconnected():
        try:
            consumers = queue_sizes(broker)["jobs.medium"]["consumerCount"]
        except AssertionError:  # the broker is not answering yet
            return False
        return consumers == WORKERS and len(of_group(running(worker), "jobs")) == WORKERS

    drill.finish(reconnected, 120)
    logs = worker.check_output("cat /var/log/brokerfleet/jobs/*.log")
    assert logs.count("no broker connection") >= WORKERS
