"""protocol: frames over a socketpair."""

import os
import socket
import threading
import unittest

from skython_runtime.protocol import (
    CALL, HEADER, INSPECT, LARGE_FRAME, OK, SPAWN, Channel, recv_control)


class Frames(unittest.TestCase):
    def setUp(self):
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def test_a_frame_is_length_kind_payload(self):
        Channel(self.a).send_json(OK, {"x": 1})
        self.assertEqual(self.b.recv(100), b'\x07\x00\x00\x00O{"x":1}')

    def test_queued_frames_go_in_one_write_and_are_read_one_by_one(self):
        out = Channel(self.a)
        out.queue(CALL, b"[1]")
        out.queue(CALL, b"[2]")
        out.flush()
        inbox = Channel(self.b)
        self.assertEqual(inbox.recv(), (CALL, bytearray(b"[1]")))
        self.assertTrue(inbox.ready(), "the second frame arrived with the first")
        self.assertEqual(inbox.recv(), (CALL, bytearray(b"[2]")))
        self.assertFalse(inbox.ready())

    def test_nothing_is_sent_before_flush(self):
        out = Channel(self.a)
        out.queue(CALL, b"[1]")
        self.b.setblocking(False)
        with self.assertRaises(BlockingIOError):
            self.b.recv(100)

    def test_a_large_frame_crosses_whole(self):
        payload = os.urandom(3 * LARGE_FRAME + 5)
        out = Channel(self.a)
        out.queue(OK, payload)
        out.queue(CALL, b"{}")
        writer = threading.Thread(target=out.flush)
        writer.start()
        inbox = Channel(self.b)
        self.assertEqual(inbox.recv(), (OK, bytearray(payload)))
        self.assertEqual(inbox.recv(), (CALL, bytearray(b"{}")))
        writer.join()

    def test_a_closed_socket_ends_the_channel_even_mid_frame(self):
        self.a.sendall(HEADER.pack(10, CALL[0]) + b"abc")
        self.a.close()
        with self.assertRaises(EOFError):
            Channel(self.b).recv()

    def test_control_frames_bring_their_descriptors(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        socket.send_fds(self.a, [HEADER.pack(2, SPAWN[0]) + b"{}"], [w])
        kind, payload, fds = recv_control(self.b)
        self.assertEqual((kind, payload, len(fds)), (SPAWN, b"{}", 1))
        os.write(fds[0], b"x")  # the same pipe, received as a new descriptor
        os.close(fds[0])
        self.assertEqual(os.read(r, 1), b"x")

    def test_control_frames_without_descriptors(self):
        self.a.sendall(HEADER.pack(4, INSPECT[0]) + b"null")
        self.assertEqual(recv_control(self.b), (INSPECT, b"null", []))


if __name__ == "__main__":
    unittest.main()
