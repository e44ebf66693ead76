"""A real RTSP camera for the tests: GStreamer's RTSP server playing a video file as H.264.

Run by Debian's ``/usr/bin/python3``, because the GObject bindings (``python3-gi``) and the server
(``gir1.2-gst-rtsp-server-1.0``) come from Debian packages, not from PyPI; the test virtualenv
never imports this file. Each client gets its own session that plays ``--video`` once, in real
time, from its first frame, re-encoded by x264enc with its default lookahead: like a camera or a
server that prerolls, the first second or so of video reaches the client in one burst.

    /usr/bin/python3 tests/rtsp_server.py --video clip.mp4 [--port 0] [--name cam]
                                          [--user U --password P]
    /usr/bin/python3 tests/rtsp_server.py --check    # exit 0 when everything needed is installed

It prints ``PORT <n>`` once it listens on 127.0.0.1 (``--port 0``: a free port), then
``TRANSPORT <header>`` for every SETUP a client sends (``RTP/AVP/TCP;...`` or ``RTP/AVP;...`` for
UDP), and serves until it is killed. ``--user``/``--password`` make it demand basic
authentication.
"""

from __future__ import annotations

import argparse
import sys

try:
    import gi
except ImportError:  # --check says so with its exit code; anything else needs it
    gi = None

ELEMENTS = (
    "filesrc",
    "decodebin",
    "qtdemux",
    "avdec_mpeg4",
    "videoconvert",
    "x264enc",
    "rtph264pay",
)
# The Debian packages that provide all of the above (.ci/run installs them when --check fails).
PACKAGES = (
    "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav python3-gi"
)

# x264enc's default lookahead (and the decoder's) makes the server preroll: the burst under test.
PIPELINE = (
    '( filesrc location="{video}" ! decodebin ! videoconvert ! video/x-raw,format=I420 '
    "! x264enc key-int-max={gop} bitrate=2000 ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def load_gstreamer():
    """Import GStreamer and its RTSP server; raise ImportError/ValueError when they are missing."""
    if gi is None:
        raise ImportError("python3-gi is not installed")
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        raise ImportError(f"GStreamer elements missing: {', '.join(missing)}")
    return GLib, GstRtsp, GstRtspServer


def check() -> int:
    try:
        load_gstreamer()
    except (ImportError, ValueError) as exc:
        print(f"rtsp_server: {exc}; install: apt-get install {PACKAGES}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check what is installed")
    parser.add_argument("--video", help="the file to play (any format GStreamer reads)")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--name", default="cam", help="the mount point: rtsp://127.0.0.1:PORT/NAME")
    parser.add_argument("--gop", type=int, default=25, help="frames between key frames")
    parser.add_argument("--user", help="demand basic authentication with this user name")
    parser.add_argument("--password", help="... and this password")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check()
    if not args.video:
        print("rtsp_server: --video is required", file=sys.stderr)
        return 2
    GLib, GstRtsp, GstRtspServer = load_gstreamer()

    def note_transport(client, context) -> None:
        ok, value = context.request.get_header(GstRtsp.RTSPHeaderField.TRANSPORT, 0)
        print(f"TRANSPORT {value if ok == GstRtsp.RTSPResult.OK else '?'}", flush=True)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(video=args.video, gop=args.gop))
    factory.set_shared(False)  # every client sees the video from its first frame
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.connect(
        "client-connected", lambda _, client: client.connect("setup-request", note_transport)
    )
    server.get_mount_points().add_factory(f"/{args.name}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(f"PORT {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
