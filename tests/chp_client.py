"""A minimal Clone-pattern (CHP, ZeroMQ RFC 12) client written from the RFC, to check that
Depot's cache interoperates with independent implementations.

Usage: chp_client.py SNAPSHOT PUBLISHER COLLECTOR SUBTREE KEY VALUE
Joins SUBTREE (subscribe, then snapshot), sets KEY=VALUE through the collector, waits for the
server to publish it, and prints the resulting state and sequence as JSON.
"""
import json
import struct
import sys
import time
import uuid

import zmq


def decode(frames):
    key, seq, uid, props, body = frames
    return key, struct.unpack(">Q", seq)[0], uid, props, body


def main():
    snapshot_ep, publisher_ep, collector_ep, subtree, key, value = sys.argv[1:7]
    ctx = zmq.Context()
    updates = ctx.socket(zmq.SUB)
    updates.connect(publisher_ep)
    updates.setsockopt(zmq.SUBSCRIBE, subtree.encode())
    updates.setsockopt(zmq.SUBSCRIBE, b"HUGZ")
    snapshot = ctx.socket(zmq.DEALER)
    snapshot.connect(snapshot_ep)
    snapshot.send_multipart([b"ICANHAZ?", subtree.encode()])
    state, seq = {}, 0
    while True:
        if not snapshot.poll(10000):
            sys.exit("snapshot timed out")
        k, s, _, _, body = decode(snapshot.recv_multipart())
        if k == b"KTHXBAI":
            seq = s
            break
        state[k.decode()] = body.decode()
    publisher = ctx.socket(zmq.PUB)
    publisher.connect(collector_ep)
    mine = uuid.uuid4().bytes
    message = [key.encode(), struct.pack(">Q", 0), mine, b"", value.encode()]
    deadline = time.time() + 10
    resend = 0.0
    while time.time() < deadline:
        if time.time() >= resend:
            publisher.send_multipart(message)  # PUB drops until connected: repeat
            resend = time.time() + 0.25
        if not updates.poll(50):
            continue
        k, s, uid, _, body = decode(updates.recv_multipart())
        if k == b"HUGZ" or s <= seq:
            continue
        seq = s
        if body:
            state[k.decode()] = body.decode()
        else:
            state.pop(k.decode(), None)
        if uid == mine:
            print(json.dumps({"seq": seq, "state": state}, sort_keys=True))
            return
    sys.exit("own update never published")


if __name__ == "__main__":
    main()
