"""Who may do what on the broker (plugins/module_utils/access.py)."""

import re

from brokerfleet import access, sizing

GROUPS = [
    {"name": "imports", "command": "/bin/true", "broker_user": "importer"},
    {"name": "reports", "command": "/bin/true", "priority_levels": {"high": 2, "low": 1}},
    {"name": "mail", "command": "/bin/true", "queue": "mail.out", "broker_user": "mailer"},
]


def users():
    return {user["user"]: user for user in access.rabbitmq_users(GROUPS, "brokerfleet", "s3cret")}


def test_the_shared_user_keeps_every_right_and_the_management_tag():
    shared = users()["brokerfleet"]
    assert (shared["configure"], shared["write"], shared["read"]) == (".*", ".*", ".*")
    assert shared["tags"] == ["management"] and shared["password"] == "s3cret"


def test_a_group_user_reaches_only_its_own_queues():
    importer = users()["importer"]
    for right in ("configure", "read"):
        pattern = re.compile(importer[right])
        assert pattern.fullmatch("imports") and pattern.fullmatch("imports.dead")
        for other in ("reports.high", "mail.out", "imports.x", "importsX", "amq.default", ""):
            assert not pattern.fullmatch(other), (right, other)
    # It may publish through the default exchange (follow-up jobs for other groups).
    assert re.fullmatch(importer["write"], "amq.default")
    assert not re.fullmatch(importer["write"], "reports.high")
    mailer = users()["mailer"]
    assert re.fullmatch(mailer["read"], "mail.out") and not re.fullmatch(mailer["read"], "mailXout")


def test_group_passwords_are_derived_from_the_secret_and_differ_per_user():
    importer, mailer = users()["importer"], users()["mailer"]
    assert importer["password"] != mailer["password"] != "s3cret"
    assert importer["password"] == access.group_password("s3cret", "importer")
    assert access.group_password("rotated", "importer") != importer["password"]
    assert importer["tags"] == [access.GROUP_USER_TAG]


def test_the_check_user_is_tagged_monitoring_and_may_touch_nothing():
    check = users()["brokerfleet-check"]
    assert access.check_user("brokerfleet") == "brokerfleet-check"
    assert check["tags"] == ["monitoring"]
    # A permission entry on the vhost (the management API lists its queues to no one without
    # one) that matches no queue or exchange: the default one is amq.default to RabbitMQ.
    for right in ("configure", "write", "read"):
        assert check[right] == "^$"
        for resource in ("imports", "imports.dead", "mail.out", "amq.default", "amq.gen-x"):
            assert not re.fullmatch(check[right], resource), (right, resource)
    assert [user["user"] for user in access.rabbitmq_users([], "bf", "s3cret")] == [
        "bf",
        "bf-check",
    ]


def test_the_check_password_is_derived_from_the_secret_and_no_other_users():
    check = users()["brokerfleet-check"]
    assert check["password"] == access.check_password("s3cret", "brokerfleet")
    assert check["password"] not in {"s3cret", access.group_password("s3cret", "brokerfleet-check")}
    assert access.check_password("rotated", "brokerfleet") != check["password"]
    assert access.check_password("s3cret", "other") != check["password"]
    others = {user["password"] for name, user in users().items() if name != "brokerfleet-check"}
    assert check["password"] not in others


def test_the_check_logs_in_as_its_own_user_on_rabbitmq_only():
    broker = {"user": "brokerfleet", "password": "s3cret"}
    secret = access.check_password("s3cret", "brokerfleet")
    assert access.check_credentials("rabbitmq", broker) == ("brokerfleet-check", secret)
    assert access.check_credentials("activemq", broker) == ("brokerfleet", "s3cret")


def test_workers_of_a_group_with_its_own_user_log_in_as_it():
    plan = sizing.fleet_plan(GROUPS, 3)
    broker = {
        "kind": "rabbitmq",
        "host": "mq",
        "user": "brokerfleet",
        "password": "s3cret",
        "vhost": "v",
        "port": 5672,
    }
    imports, reports, _ = (sizing.worker_environment(group, broker) for group in plan)
    secret = access.group_password("s3cret", "importer")
    assert imports["BROKER_URL"] == f"amqp://importer:{secret}@mq:5672/v"
    assert reports["BROKER_URL"] == "amqp://brokerfleet:s3cret@mq:5672/v"


def test_changes_write_only_differences_and_remove_guest_and_stale_group_users():
    wanted = access.rabbitmq_access_changes(list(users().values()), [], [])
    assert {c["user"] for c in wanted["permissions"]} == {
        "brokerfleet",
        "brokerfleet-check",
        "importer",
        "mailer",
    }
    assert {"user": "brokerfleet-check", "tags": ["monitoring"]} in wanted["tags"]
    listed_users = [
        {"user": "brokerfleet", "tags": ["management"]},
        {"user": "brokerfleet-check", "tags": ["monitoring"]},
        {"user": "importer", "tags": [access.GROUP_USER_TAG]},
        {"user": "mailer", "tags": []},
        {"user": "guest", "tags": ["administrator"]},
        {"user": "oldgroup", "tags": [access.GROUP_USER_TAG]},
        {"user": "someone_else", "tags": ["monitoring"]},
    ]
    listed_rights = [
        {key: user[key] for key in ("user", "configure", "write", "read")}
        for user in users().values()
    ]
    changes = access.rabbitmq_access_changes(list(users().values()), listed_users, listed_rights)
    assert changes["tags"] == [{"user": "mailer", "tags": [access.GROUP_USER_TAG]}]
    assert changes["permissions"] == []
    # Users the bundle did not make are left alone, guest excepted; the check user stays.
    assert sorted(changes["remove"]) == ["guest", "oldgroup"]


def test_the_check_user_is_retagged_and_repermitted_but_never_removed():
    wanted = list(users().values())
    listed_users = [
        {"user": "brokerfleet", "tags": ["management"]},
        {"user": "brokerfleet-check", "tags": ["management"]},  # changed by hand
        {"user": "importer", "tags": [access.GROUP_USER_TAG]},
        {"user": "mailer", "tags": [access.GROUP_USER_TAG]},
    ]
    listed_rights = [
        {key: user[key] for key in ("user", "configure", "write", "read")}
        for user in wanted
        if user["user"] != "brokerfleet-check"
    ] + [{"user": "brokerfleet-check", "configure": ".*", "write": ".*", "read": ".*"}]
    changes = access.rabbitmq_access_changes(wanted, listed_users, listed_rights)
    assert changes == {
        "tags": [{"user": "brokerfleet-check", "tags": ["monitoring"]}],
        "permissions": [
            {"user": "brokerfleet-check", "configure": "^$", "write": "^$", "read": "^$"}
        ],
        "remove": [],
    }
    # Nor when no group is configured any more.
    alone = access.rabbitmq_users([], "brokerfleet", "s3cret")
    assert access.rabbitmq_access_changes(alone, listed_users, [])["remove"] == [
        "importer",
        "mailer",
    ]


def test_tags_listed_as_a_string_are_read_too():
    changes = access.rabbitmq_access_changes(
        [{"user": "a", "tags": ["management"], "configure": "", "write": "", "read": ""}],
        [{"user": "a", "tags": "[management]"}],
        [{"user": "a", "configure": "", "write": "", "read": ""}],
    )
    assert changes == {"tags": [], "permissions": [], "remove": []}


def test_the_jmx_password_is_hex_derived_from_the_secret_and_no_group_user_shares_it():
    password = access.jmx_password("p@ss w#rd")
    assert re.fullmatch("[0-9a-f]{64}", password)  # one token on a password-file line
    assert password == access.jmx_password("p@ss w#rd") != access.jmx_password("rotated")
    assert password not in {
        access.group_password("p@ss w#rd", user) for user in ("jmx", "activemq jmx")
    }


def activemq_rights(destination, user, right):
    """Whether ActiveMQ grants ``right`` on queue ``destination`` to ``user`` of GROUPS: the
    union over every entry whose name matches (">" matches all, as the tests' names need)."""
    users = {u["user"]: u for u in access.activemq_users(GROUPS, "brokerfleet", "s3cret")}
    entries = access.activemq_authorization(GROUPS)["entries"]
    return any(
        entry["kind"] == "queue"
        and entry["name"] in (">", destination)
        and users[user]["group"] in entry[right].split(",")
        for entry in entries
    )


def test_activemq_users_are_the_shared_one_and_each_group_user_with_a_derived_password():
    users = {u["user"]: u for u in access.activemq_users(GROUPS, "brokerfleet", "s3cret")}
    assert set(users) == {"brokerfleet", "importer", "mailer"}
    assert users["brokerfleet"]["password"] == "s3cret"
    assert users["importer"]["password"] == access.group_password("s3cret", "importer")
    assert len({user["group"] for user in users.values()}) == 3


def test_an_activemq_group_user_reads_only_its_own_queues_and_sends_anywhere():
    own = ["imports", "ActiveMQ.DLQ.Queue.imports"]
    for queue in own:
        for right in ("read", "write", "admin"):
            assert activemq_rights(queue, "importer", right), (queue, right)
    for queue in ("reports.high", "mail.out", "ActiveMQ.DLQ.Queue.mail.out"):
        assert not activemq_rights(queue, "importer", "read"), queue
        assert not activemq_rights(queue, "importer", "admin"), queue
        assert activemq_rights(queue, "importer", "write"), queue  # follow-up jobs
        assert activemq_rights(queue, "brokerfleet", "read"), queue
    temporary = access.activemq_authorization(GROUPS)["temporary"].split(",")
    assert set(temporary) == {"brokerfleet"} | {
        access.activemq_group(u) for u in ("importer", "mailer")
    }
