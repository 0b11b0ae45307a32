"""What a co-tenant worker and a broken run cannot do (README "Security"): values reach the
workers exactly as written, the worker user reaches no secret and no state of the root checker,
a symlink it plants is never followed, no supervised process runs as root, the password never
shows on a command line, and a run that fails before the switch leaves the fleet as it was.

Runs last in the scenario (it changes the broker password)."""

import json
import re
import shlex
import time

import pytest
from conftest import VHOST, ansible_playbook, done_ids, publish, rabbitmqctl, running, wait_until

from brokerfleet import access

WORKER_USER = "brokerfleet"
# Jobs go to this group's queue: imports may still hold the backlog of the status drill.
THUMBNAILS = "thumbnails"


def as_user(host, command, user=WORKER_USER):
    return host.run(f"su -s /bin/sh {user} -c {shlex.quote(command)}")


def process_view(worker, pid, user):
    """argv and environment of a worker process, read from /proc and decoded as UTF-8."""
    script = (
        "import json, sys\n"
        f"argv = open('/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[:-1]\n"
        f"env = open('/proc/{pid}/environ', 'rb').read().split(b'\\0')[:-1]\n"
        "print(json.dumps({'argv': [a.decode() for a in argv],\n"
        "                  'env': dict(e.decode().split('=', 1) for e in env)}))\n"
    )
    # As the worker's own user: root in the container lacks CAP_SYS_PTRACE, which
    # /proc/<pid>/environ of another user's process asks for.
    result = as_user(worker, f"python3 -c {shlex.quote(script)}", user=user)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_awkward_commands_and_environments_reach_the_process_byte_for_byte(worker, group_vars):
    [awkward] = [g for g in group_vars["worker_groups"] if g["name"] == "awkward"]
    pid = running(worker)["awkward-00"]
    seen = process_view(worker, pid, awkward["user"])
    assert seen["argv"] == shlex.split(awkward["command"])
    # The command keeps supervisord's %(name)s syntax and a comment sign as plain text.
    assert "%(program_name)s" in seen["argv"] and "50% #1; a,b" in seen["argv"]
    for key, value in awkward["environment"].items():
        assert seen["env"][key] == str(value), key
    assert seen["env"]["WORKER_PROCESS"] == "awkward-00"


def test_jobs_flow_with_a_password_full_of_url_and_shell_characters(worker, group_vars):
    assert set('@/:#%"') <= set(group_vars["broker_password"])
    publish(worker, THUMBNAILS, 3, 0.1, first_id=70001)
    assert wait_until(lambda: {70001, 70002, 70003} <= set(done_ids(worker, THUMBNAILS)), 60)


def spec_of(worker, group):
    """The spec file the programs of ``group`` start from."""
    conf = f"/etc/supervisor/conf.d/brokerfleet-{group}.conf"
    return worker.check_output(f"awk '/^command=/ {{print $2; exit}}' {conf}")


def test_a_group_with_users_of_its_own_reaches_only_its_own_queues(broker, worker):
    # Unix: its workers run as its user, and only that user can read its spec (the password).
    pid = running(worker)["awkward-00"]
    assert worker.check_output(f"ps -o user= -p {pid}") == "tenant"
    spec = worker.file(spec_of(worker, "awkward"))
    assert (spec.user, spec.group, spec.mode) == ("root", "tenant", 0o640)
    assert as_user(worker, f"cat {spec.path}").rc != 0  # the brokerfleet user
    # Broker: with its credentials, its own queue answers and another group's is refused.
    script = (
        "import json, pika\n"
        f"env = json.load(open({spec.path!r}))['environment']\n"
        "connection = pika.BlockingConnection(pika.URLParameters(env['BROKER_URL']))\n"
        "connection.channel().basic_get('awkward')\n"
        "try:\n"
        "    connection.channel().basic_get('imports')\n"
        "    print('imports: read')\n"
        "except pika.exceptions.ChannelClosedByBroker as error:\n"
        "    print('imports:', error.reply_code)\n"
    )
    assert worker.check_output(f"python3 -c {shlex.quote(script)}") == "imports: 403"
    rights = {p["user"]: p for p in rabbitmqctl(broker, "list_permissions", "-p", VHOST)}
    assert rights["tenant-mq"]["read"] == r"^(awkward|awkward\.dead)$"


def test_no_process_under_supervisord_runs_as_root(worker):
    supervisord = worker.check_output("cat /var/run/supervisord.pid")
    users = worker.check_output(f"ps -o user= --ppid {supervisord}").split()
    assert users and "root" not in users, users


def test_the_worker_user_reads_no_secret_no_config_and_no_checker_state(worker):
    private = [
        "/etc/supervisor/conf.d/brokerfleet-imports.conf",
        "/var/lib/brokerfleet-check/load-guard.json",
        "/var/log/brokerfleet/imports/imports-00.log",
        "/var/log/brokerfleet/check.log",
    ]
    assert worker.file("/var/lib/brokerfleet-check/load-guard.json").exists
    for path in private:
        assert as_user(worker, f"cat {path}").rc != 0, path
    assert as_user(worker, "ls /var/lib/brokerfleet-check").rc != 0


def test_the_check_configuration_is_root_only(broker, worker):
    # broker.json holds the broker password, checks.json the alert command (maybe a token).
    for host, path in [
        (broker, "/etc/brokerfleet/broker.json"),
        (broker, "/etc/brokerfleet/checks.json"),
        (worker, "/etc/brokerfleet/checks.json"),
    ]:
        config = host.file(path)
        assert (config.user, config.mode) == ("root", 0o600), path
        assert as_user(host, f"cat {path}", user="nobody").rc != 0, path
    # Its cron lines name the check and nothing else: the settings are in checks.json.
    assert (
        "brokerfleet-check workers --quiet\n"
        in worker.file("/etc/cron.d/brokerfleet-check").content_string
    )


def test_a_symlink_planted_by_the_worker_user_is_never_followed(worker):
    target = "/root/planted-by-a-worker"
    worker.run(f"rm -f {target}")
    # Where the checker writes, the worker user cannot even create a name.
    for directory in ["/var/lib/brokerfleet-check", "/var/log/brokerfleet"]:
        assert as_user(worker, f"ln -s {target} {directory}/planted").rc != 0, directory
    # Where it can (its home, the checker's old state directory), the checker no longer looks.
    home = "/var/lib/brokerfleet"
    names = ["load-guard.json", "last-workers.json", "last-workers.json.tmp", "autoscale.json.tmp"]
    for name in names:
        worker.run(f"rm -f {home}/{name}")
        as_user(worker, f"ln -s {target} {home}/{name}")
    try:
        worker.run("brokerfleet-check workers")
        assert not worker.file(target).exists
        # The checker wrote its state where it should.
        state = worker.file("/var/lib/brokerfleet-check/last-workers.json")
        assert (state.user, state.mode, state.is_symlink) == ("root", 0o600, False)
    finally:
        worker.run(" ".join(["rm -f", *(f"{home}/{name}" for name in names)]))


def test_listeners_are_bound_as_documented(broker):
    def bound(port):
        lines = broker.check_output(f"ss -Hltn 'sport = :{port}'").splitlines()
        return {line.split()[3] for line in lines}

    assert bound(5672) <= {"0.0.0.0:5672", "*:5672", "[::]:5672"}  # rabbitmq_amqp_address
    assert bound(15672) == {"127.0.0.1:15672"}  # management: loopback only
    assert bound(15692) == {"127.0.0.1:15692"}  # rabbitmq_prometheus: loopback only
    # Erlang's epmd and distribution port, as Debian starts them, behind the cookie.
    assert bound(4369) <= {"0.0.0.0:4369", "[::]:4369"}
    assert bound(25672) <= {"0.0.0.0:25672", "[::]:25672"}
    cookie = broker.file("/var/lib/rabbitmq/.erlang.cookie")
    assert (cookie.user, cookie.mode) == ("rabbitmq", 0o400)


def sample_command_lines(host, path):
    """Start recording every process's command line every 50 ms on ``host``."""
    script = (
        "import os, time\n"
        f"out = open({path!r}, 'ab')\n"
        "while True:\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            out.write(open(f'/proc/{pid}/cmdline', 'rb').read() + b'\\n')\n"
        "        except OSError:\n"
        "            pass\n"
        "    out.flush()\n"
        "    time.sleep(0.05)\n"
    )
    host.check_output(f"nohup python3 -c {shlex.quote(script)} >/dev/null 2>&1 & echo $!")


def test_a_failed_run_leaves_files_pids_and_credentials_as_they_were(broker, worker, group_vars):
    # The programs, and the specs they start from (a failed run may leave new, unused ones).
    in_use = "/etc/supervisor/conf.d/brokerfleet-*.conf $(awk '/^command=/ {print $2}' \
        /etc/supervisor/conf.d/brokerfleet-*.conf | sort -u)"
    before = worker.check_output(f"md5sum {in_use}")
    pids = running(worker)
    # A directory missing on the host passes preflight (which cannot see the host) and fails
    # the check of the group's spec: before the broker play, so the password below never
    # reaches the broker.
    groups = [
        {**group, "directory": "/nonexistent/app"} if group["name"] == "imports" else group
        for group in group_vars["worker_groups"]
    ]
    output = ansible_playbook(
        "site.yml", expect_failure=True, broker_password="never-applied", worker_groups=groups
    )
    assert "directory /nonexistent/app does not exist on this host" in output
    assert "PLAY [Install and tune the message broker]" not in output
    assert worker.check_output(f"md5sum {in_use}") == before
    assert running(worker) == pids
    # A worker that restarts now still logs in with the password in force.
    killed = pids["thumbnails-00"]
    worker.check_output(f"kill -9 {killed}")
    assert wait_until(lambda: running(worker).get("thumbnails-00") not in (None, killed), 30)
    publish(worker, THUMBNAILS, 6, 0.1, first_id=71001)
    assert wait_until(lambda: set(range(71001, 71007)) <= set(done_ids(worker, THUMBNAILS)), 60)


def test_the_password_never_shows_on_a_command_line_while_it_changes(broker, worker):
    new_password = "rotated-" + str(int(time.time())) + "-s3cret"
    log = "/root/cmdlines.log"
    for host in (broker, worker):
        host.run(f"rm -f {log}")
        sample_command_lines(host, log)
    try:
        ansible_playbook("site.yml", broker_password=new_password)
    finally:
        for host in (broker, worker):
            host.run("pkill -f 'cmdline'")
    # Neither the password nor those derived from it for group awkward's broker user and for
    # the broker check's.
    secrets = [
        new_password,
        access.group_password(new_password, "tenant-mq"),
        access.check_password(new_password, "brokerfleet"),
    ]
    for host in (broker, worker):
        recorded = host.check_output(f"wc -l < {log}")
        assert int(recorded) > 1000, recorded  # the sampler ran throughout
        for secret in secrets:
            assert host.run(f"grep -c -F {shlex.quote(secret)} {log}").stdout.strip() == "0"
    # The new password is in force: the workers restarted with it and jobs flow.
    publish(worker, THUMBNAILS, 3, 0.1, first_id=72001)
    assert wait_until(lambda: {72001, 72002, 72003} <= set(done_ids(worker, THUMBNAILS)), 60)


@pytest.mark.parametrize(
    ("options", "shown"),
    [(("--limit", "worker"), "--limit worker"), (("--tags", "workers"), "--tags workers")],
)
def test_a_run_that_leaves_the_broker_out_refuses_a_group_whose_queue_it_lacks(
    worker, group_vars, options, shown
):
    # Without the broker play (--limit, or tags), nothing would declare the new queue.
    newcomer = {"name": "newcomer", "command": "/usr/local/bin/brokerfleet-worker", "min": 0}
    pids = running(worker)
    output = ansible_playbook(
        "site.yml",
        expect_failure=True,
        options=options,
        worker_groups=[*group_vars["worker_groups"], newcomer],
    )
    # (The message may be folded at any blank.)
    assert re.search(r"leaves\s+out\s+the\s+broker\s+play\s+on\s+broker", output), output
    assert re.search(r"has\s+no\s+queue\s+newcomer", output), output
    assert re.search(shown.replace(" ", r"\s+"), output), output
    assert running(worker) == pids
    assert worker.run("test -e /etc/supervisor/conf.d/brokerfleet-newcomer.conf").rc == 1
