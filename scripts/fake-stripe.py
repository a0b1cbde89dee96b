"""A stand-in for the two Stripe endpoints Headroom calls (checkout sessions
and payment intents), on loopback, for the API fuzzing: the payment routes
are exercised as they work with a provider, not as "not configured".
Writes its port to the file named by its one argument, then serves."""

import http.server
import itertools
import json
import os
import sys

counter = itertools.count(1)


class Stripe(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        number = next(counter)
        if self.path == "/v1/checkout/sessions":
            body = {"id": f"cs_fuzz_{number}", "url": f"https://checkout.invalid/cs_fuzz_{number}"}
        elif self.path == "/v1/payment_intents":
            body = {"id": f"pi_fuzz_{number}", "status": "succeeded"}
        else:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stripe)
with open(sys.argv[1] + ".tmp", "w") as port:
    port.write(str(server.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
