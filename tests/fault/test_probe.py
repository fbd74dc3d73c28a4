import json, time
from tests.helpers import eventually
def test_probe(conn, start_node, tmp_path):
    node = start_node(log_level="debug")
    tid = conn.execute("INSERT INTO stagerunner.tasks (name, args) VALUES ('tests.tasks:inheritance', '[]') RETURNING id").fetchone()[0]
    eventually(lambda: conn.execute("SELECT status::text FROM stagerunner.tasks WHERE id=%s", [tid]).fetchone()[0] == 'success', timeout=10)
    print(conn.execute("SELECT result FROM stagerunner.tasks WHERE id=%s", [tid]).fetchone()[0])
    print(node.log()[:3000])
