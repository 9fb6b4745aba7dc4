"""An independent queue client in Python, written from docs/PROTOCOL.md only.

Usage: queue_client.py ROUTER PULL QUEUE
Pushes one message, publishes two with a confirm, consumes all three with a cumulative ack,
and prints what it saw as JSON.
"""
import json
import struct
import sys

import zmq

router, pull, queue = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ctx = zmq.Context()
poller_timeout_ms = 10_000


def recv(sock):
    if not sock.poll(poller_timeout_ms):
        sys.exit("no answer from the queue service")
    return sock.recv_multipart()


push = ctx.socket(zmq.PUSH)
push.connect(pull)
push.send_multipart([queue, b"pushed from python"])

dealer = ctx.socket(zmq.DEALER)
dealer.connect(router)
dealer.send_multipart([b"PUB", b"tag-1", queue, b"first", b"second"])
ok = recv(dealer)
assert ok[0] == b"OK" and ok[1] == b"tag-1", ok
first, last = struct.unpack(">Q", ok[2])[0], struct.unpack(">Q", ok[3])[0]

dealer.send_multipart([b"SUB", queue, b"", struct.pack(">I", 10)])
ready = recv(dealer)
assert ready == [b"READY", queue, b""], ready
messages = []
while len(messages) < 3:
    frames = recv(dealer)
    assert frames[0] == b"MSG" and frames[1] == queue, frames
    batch = frames[3]
    while batch:
        seq, redeliveries, length = struct.unpack(">QII", batch[:16])
        messages.append(
            {"seq": seq, "redeliveries": redeliveries, "body": batch[16 : 16 + length].decode()}
        )
        batch = batch[16 + length :]
dealer.send_multipart([b"ACKTO", queue, b"", struct.pack(">Q", messages[-1]["seq"])])
dealer.send_multipart([b"HB"])
assert recv(dealer) == [b"HB"]
dealer.send_multipart([b"STATS", queue])
stats = recv(dealer)
assert stats[0] == b"STATS", stats
print(json.dumps({"confirm": [first, last], "messages": messages, "stats": json.loads(stats[1])}))
