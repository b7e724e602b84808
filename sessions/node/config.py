"""The runtime's settings on this node, read once from Django's settings.

Owns: `BrokerConfig` and how it is made from settings (capacity defaults,
limits, time limits, the sandbox's, this install's identity). It is composed of
the machines' own config (`machines`: how machines are made, run and held);
the scheduler and keeper get the parts they need as configs of their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from sessions.display.recording import RecorderLimits
from sessions.machines.config import MachinesConfig
from sessions.machines.host import capacity_default, install_id
from sessions.machines.printout import PrintLimits
from sessions.machines.sandbox import SandboxConfig
from sessions.machines.video import VideoLimits
from sessions.node.keeper import KeeperConfig
from sessions.placement.scheduler import SchedulerConfig


@dataclass(frozen=True)
class RecordingConfig:
    """Where recordings are kept, how long a visitor's is, and how they are made."""

    store: Path
    visitor_keep_s: float = 3600.0
    limits: RecorderLimits = field(default_factory=RecorderLimits)
    video: VideoLimits = field(default_factory=VideoLimits)


@dataclass(frozen=True)
class BrokerConfig:
    machines: MachinesConfig
    grace_s: float
    capacity: int
    queue_max: int = 0
    session_max_s: float = 30 * 60.0
    idle_s: float = 10 * 60.0
    warning_s: float = 60.0
    reaper_interval_s: float = 30.0
    # How often this node writes its heartbeat, and after how long without one a
    # node counts as dead (its visits are then ended by whichever node sees it).
    node_heartbeat_s: float = 3.0
    node_dead_s: float = 10.0
    starts_per_browser: int = 10
    starts_per_address: int = 120
    start_window_s: float = 60.0
    # Live visits (waiting, starting, running) one network address may hold.
    live_per_address: int = 50
    displays_per_session: int = 4
    watchers_per_session: int = 10
    keys_max_chars: int = 1000
    key_hold_ms: int = 10
    keys_interval_s: float = 0.01
    # The shortest time between two reads of one machine's text screen.
    screen_text_interval_s: float = 0.25
    # This install's name on the host (the node's name in a portal of several).
    install: str = "default"
    # Where the other nodes reach this node's server (host:port).
    node_address: str = ""
    # Where the start limits of all nodes are kept (empty: in this process).
    redis_url: str = ""
    # The visitor's sandbox: checkpoints per visit, visitors' disks.
    checkpoints_per_visit: int = 5
    media_max_bytes: int = 1457664
    media_per_visit: int = 10
    sandbox_job_timeout_s: float = 60.0
    files_out_timeout_s: float = 120.0
    # Saved visits: the largest file taken in, the most its contents may unpack to,
    # and how many saves one visit may make within the start window.
    save_max_bytes: int = 64 * 1024 * 1024
    save_expanded_max_bytes: int = 1024 * 1024 * 1024
    saves_per_window: int = 6
    # Machines kept resumed and paused per exhibit with a start state (0: no pool).
    pool_size: int = 0
    # What each visit's prints and each conversion may use (the paper: the default).
    prints: PrintLimits = field(default_factory=PrintLimits)
    # Recordings of visits: where they are kept, their bounds, their exports.
    recordings: RecordingConfig = field(default_factory=lambda: RecordingConfig(store=Path("recordings")))

    @classmethod
    def from_settings(cls) -> BrokerConfig:
        capacity = settings.PORTAL_MAX_SESSIONS or capacity_default()
        return cls(
            machines=MachinesConfig.from_settings(),
            install=install_id(),
            grace_s=settings.PORTAL_GRACE_S,
            capacity=capacity,
            queue_max=settings.PORTAL_QUEUE_MAX or 2 * capacity,
            session_max_s=settings.PORTAL_SESSION_MAX_S,
            idle_s=settings.PORTAL_IDLE_S,
            warning_s=settings.PORTAL_WARNING_S,
            reaper_interval_s=settings.PORTAL_REAPER_INTERVAL_S,
            node_heartbeat_s=settings.PORTAL_NODE_HEARTBEAT_S,
            node_dead_s=settings.PORTAL_NODE_DEAD_S,
            node_address=settings.PORTAL_NODE_ADDRESS,
            redis_url=settings.PORTAL_REDIS_URL,
            checkpoints_per_visit=settings.PORTAL_CHECKPOINTS_PER_VISIT,
            media_max_bytes=settings.PORTAL_MEDIA_MAX_BYTES,
            media_per_visit=settings.PORTAL_MEDIA_PER_VISIT,
            sandbox_job_timeout_s=settings.PORTAL_SANDBOX_JOB_TIMEOUT_S,
            files_out_timeout_s=settings.PORTAL_FILES_OUT_TIMEOUT_S,
            pool_size=max(0, settings.PORTAL_POOL_SIZE),
            save_max_bytes=settings.PORTAL_SAVE_MAX_BYTES,
            save_expanded_max_bytes=settings.PORTAL_SAVE_EXPANDED_MAX_BYTES,
            saves_per_window=settings.PORTAL_SAVES_PER_WINDOW,
            starts_per_browser=settings.PORTAL_STARTS_PER_BROWSER,
            starts_per_address=settings.PORTAL_STARTS_PER_ADDRESS,
            start_window_s=settings.PORTAL_START_WINDOW_S,
            live_per_address=settings.PORTAL_LIVE_PER_ADDRESS or max(1, capacity // 2),
            displays_per_session=settings.PORTAL_DISPLAYS_PER_SESSION,
            watchers_per_session=settings.PORTAL_WATCHERS_PER_SESSION,
            keys_max_chars=settings.PORTAL_KEYS_MAX_CHARS,
            key_hold_ms=settings.PORTAL_KEY_HOLD_MS,
            keys_interval_s=settings.PORTAL_KEYS_INTERVAL_S,
            screen_text_interval_s=max(0.01, settings.PORTAL_SCREEN_TEXT_INTERVAL_MS / 1000),
            prints=PrintLimits(
                paper=settings.PORTAL_PRINT_PAPER if settings.PORTAL_PRINT_PAPER in ("a4", "letter")
                else "a4",
                prints_max=settings.PORTAL_PRINTS_PER_VISIT, bytes_max=settings.PORTAL_PRINTS_BYTES,
                pages_max=settings.PORTAL_PRINT_PAGES_MAX, cpu_s=settings.PORTAL_PRINT_CPU_S,
                timeout_s=settings.PORTAL_PRINT_TIMEOUT_S,
                memory_bytes=settings.PORTAL_PRINT_MEMORY_BYTES,
                output_bytes=settings.PORTAL_PRINT_OUTPUT_BYTES),
            recordings=RecordingConfig(
                store=Path(settings.PORTAL_RECORDING_DIR),
                visitor_keep_s=settings.PORTAL_RECORDING_VISITOR_KEEP_S,
                limits=RecorderLimits(keyframe_s=settings.PORTAL_RECORDING_KEYFRAME_S,
                                      frames_per_s=settings.PORTAL_RECORDING_FPS,
                                      max_bytes=settings.PORTAL_RECORDING_MAX_BYTES,
                                      max_s=settings.PORTAL_RECORDING_MAX_S,
                                      timeout_s=settings.PORTAL_QMP_TIMEOUT_S),
                video=VideoLimits(timeout_s=settings.PORTAL_RECORDING_EXPORT_TIMEOUT_S,
                                  cpu_s=settings.PORTAL_RECORDING_EXPORT_CPU_S,
                                  memory_bytes=settings.PORTAL_RECORDING_EXPORT_MEMORY_BYTES,
                                  frames_per_s=settings.PORTAL_RECORDING_EXPORT_FPS)),
        )

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            node=self.install, capacity=self.capacity, queue_max=self.queue_max,
            session_max_s=self.session_max_s,
            starts_per_browser=self.starts_per_browser, starts_per_address=self.starts_per_address,
            start_window_s=self.start_window_s, live_per_address=self.live_per_address,
            node_dead_s=self.node_dead_s,
        )

    def keeper_config(self) -> KeeperConfig:
        machines = self.machines
        return KeeperConfig(
            run_root=machines.run_root, grace_s=self.grace_s,
            display_wait_s=machines.start_timeout_s + machines.qemu_img_timeout_s,
            session_max_s=self.session_max_s, idle_s=self.idle_s, warning_s=self.warning_s,
            displays_per_session=self.displays_per_session,
            watchers_per_session=self.watchers_per_session,
            sandbox=SandboxConfig(
                qemu_img=machines.qemu_img_binary, checkpoints_max=self.checkpoints_per_visit,
                media_max_bytes=self.media_max_bytes, media_per_visit=self.media_per_visit,
                job_timeout_s=self.sandbox_job_timeout_s, read_timeout_s=self.files_out_timeout_s),
        )
