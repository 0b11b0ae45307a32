"""Fleet metrics over time: a real Prometheus (Debian's package) on the broker host scrapes
RabbitMQ's own exporter (rabbitmq_prometheus, enabled by the role) and node_exporter on both
hosts, which serves brokerfleet-check's textfiles (fleet_checks_prometheus_dir in
molecule.yml); then every query of the Grafana dashboard (dashboards/brokerfleet.json) must
return data. Grafana itself cannot be installed here; its queries can be run."""

import json
import shlex
import time
import urllib.parse

import pytest
from conftest import VHOST, check, in_background, publish, wait_until

from brokerfleet import dashboard

# molecule/verify.yml runs pytest from the repository's root, where DASHBOARD is.
QUERIES = dashboard.expressions(dashboard.load())

# Panels with nothing to show in this scenario, and why. Every other panel must have data.
EMPTY_HERE = {
    # brokerfleet-check's broker usage is ActiveMQ's memory, store and temp: RabbitMQ has none.
    "ActiveMQ limits used",
    # The check writes a queue's depth only where no exporter has it: ActiveMQ.
    "Queue depth (brokerfleet-check)",
}

WORK = "/tmp/brokerfleet-metrics"  # Prometheus's configuration, data and log
TEXTFILES = "/var/lib/prometheus/node-exporter"  # Debian's default; molecule.yml points here
SCRAPE = {
    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
    "scrape_configs": [
        {"job_name": "rabbitmq", "static_configs": [{"targets": ["127.0.0.1:15692"]}]},
        {
            "job_name": "rabbitmq_detailed",
            "metrics_path": "/metrics/detailed",
            "params": {"vhost": [VHOST], "family": list(dashboard.DETAILED_FAMILIES)},
            "static_configs": [{"targets": ["127.0.0.1:15692"]}],
        },
        {"job_name": "node", "static_configs": [{"targets": ["broker:9100", "worker:9100"]}]},
    ],
}


def install(packages):
    """Install Debian ``packages`` without recommends (policy-rc.d keeps them from starting),
    refreshing the package lists only when the install needs it, then start node_exporter."""
    apt = f"apt-get install -y -qq --no-install-recommends {packages}"
    return (
        "export DEBIAN_FRONTEND=noninteractive; "
        f"{{ {apt} || {{ apt-get update -qq && {apt}; }}; }} >/tmp/metrics-apt.log 2>&1 && "
        "if [ -x /etc/init.d/prometheus-node-exporter ]; then "
        "service prometheus-node-exporter start; "
        "else setsid nohup prometheus-node-exporter </dev/null >/tmp/node-exporter.log 2>&1 & fi"
    )


def fetch(broker, url):
    """The body of an HTTP GET from inside the broker host, or None when it fails."""
    script = (
        "import sys, urllib.request\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    result = broker.run(f"python3 -c {shlex.quote(script)} {shlex.quote(url)}")
    return result.stdout if result.rc == 0 else None


def query(broker, expression):
    """Prometheus's answer to an instant query, as JSON ({} when it did not answer)."""
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    body = fetch(broker, url)
    return json.loads(body) if body else {}


def result(answer):
    return answer.get("data", {}).get("result", [])


@pytest.fixture(scope="module")
def prometheus(broker, worker):
    """Prometheus on the broker host's loopback, scraping every second; node_exporter on both
    hosts. Installed once for the module; Prometheus is stopped at the end."""
    in_background(worker, install("prometheus-node-exporter"), "metrics-install")
    broker.check_output(install("prometheus prometheus-node-exporter"))
    broker.check_output(f"rm -rf {WORK} && mkdir -p {WORK}")
    config = json.dumps(SCRAPE)  # JSON is YAML
    broker.check_output(f"echo {shlex.quote(config)} > {WORK}/prometheus.yml")
    broker.check_output(
        f"setsid nohup prometheus --config.file={WORK}/prometheus.yml"
        f" --storage.tsdb.path={WORK}/data --web.listen-address=127.0.0.1:9090"
        f" </dev/null >{WORK}/prometheus.log 2>&1 &"
        f" echo $! > {WORK}/prometheus.pid"
    )
    try:
        assert wait_until(lambda: fetch(broker, "http://127.0.0.1:9090/-/ready"), 30), broker.run(
            f"cat {WORK}/prometheus.log"
        ).stdout
        assert wait_until(lambda: fetch(broker, "http://worker:9100/"), 60), worker.run(
            "cat /tmp/metrics-install.log /tmp/metrics-apt.log"
        ).stdout
        yield broker
    finally:
        broker.run(f"kill $(cat {WORK}/prometheus.pid)")


@pytest.fixture(scope="module")
def scraped(prometheus, broker, worker):
    """Jobs in flight, and brokerfleet-check's textfiles written with rates: two broker
    samples a few seconds apart (the management API's counters move every 5 s)."""
    publish(worker, "thumbnails", 300, 0.05, first_id=95001)
    publish(worker, "imports", 6, 1, first_id=95501)
    check(broker, "broker")
    time.sleep(6)
    check(broker, "broker")
    check(worker, "workers")
    for host, name in ((broker, "broker"), (worker, "workers")):
        assert host.file(f"{TEXTFILES}/brokerfleet-{name}.prom").exists, name
    return prometheus


def test_every_target_is_scraped(scraped):
    wanted = {
        ("rabbitmq", "127.0.0.1:15692"),
        ("rabbitmq_detailed", "127.0.0.1:15692"),
        ("node", "broker:9100"),
        ("node", "worker:9100"),
    }

    def up():
        return {
            (s["metric"]["job"], s["metric"]["instance"]) for s in result(query(scraped, "up == 1"))
        }

    assert wait_until(lambda: up() >= wanted, 20), up()


@pytest.mark.parametrize(
    ("title", "ref", "expression"),
    [pytest.param(*q, id=f"{q[0]} {q[1]}") for q in QUERIES],
)
def test_every_panel_query_returns_data(scraped, title, ref, expression):
    if title in EMPTY_HERE:
        answer = query(scraped, expression)
        # Valid, and empty as said: should it show data one day, it leaves EMPTY_HERE.
        assert (answer.get("status"), result(answer)) == ("success", []), answer
        return

    def answered():
        answer = query(scraped, expression)
        return answer if result(answer) else None

    answer = wait_until(answered, 20)
    assert answer and answer["status"] == "success", (title, ref, expression, answer)
