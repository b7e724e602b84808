// The disk box: software that came on several disks, changed while the machine runs.
// Each drive of the machine (A:, B:, the CD drive) is a group with what is in it, a
// choice of the disks that fit it, "Put in" and "Eject"
// (PUT /api/sessions/<id>/drives/<drive>). The events socket (session.js passes its
// events on as "portal:event") says "drives" after every change, from this tab or
// another, and "state" when the machine starts or is reset: the box is asked again
// then (GET /api/sessions/<id>/drives). Changes are announced politely.
import { api } from "./csrf.js";
import { format, gettext as _ } from "./i18n.js";

const root = document.getElementById("disk-box");
if (root) diskBoxStart(root);

function diskBoxStart(root) {
  const path = root.dataset.drivesPath;
  const container = document.getElementById("disk-box-drives");
  const summary = document.getElementById("disk-box-summary");
  const status = document.getElementById("disk-box-status");
  let disks = [];
  let drives = [];
  let built = "";

  function driveName(drive) {
    return drive === "cd" ? _("CD drive") : format(_("Drive %(letter)s:"), { letter: drive.toUpperCase() });
  }

  function label(diskId) {
    const disk = disks.find((candidate) => candidate.id === diskId);
    return disk ? disk.label : _("a disk");
  }

  function held(entry) {
    return entry.disk === null ? _("empty") : label(entry.disk);
  }

  function fits(drive, disk) {
    return disk.media === (drive === "cd" ? "cdrom" : "floppy");
  }

  // The groups are made again only when the drives or disks themselves change, so a
  // choice being made (or the focus) is not lost when another tab changes a disk.
  function build() {
    const shape = JSON.stringify([drives.map((entry) => entry.drive), disks]);
    if (shape === built) return;
    built = shape;
    container.replaceChildren(...drives.map((entry) => group(entry.drive)));
  }

  function group(drive) {
    const fieldset = document.createElement("fieldset");
    fieldset.className = "disk-box-drive";
    fieldset.dataset.drive = drive;
    const legend = document.createElement("legend");
    legend.textContent = driveName(drive);
    const inside = document.createElement("p");
    inside.className = "disk-box-held";
    const choose = document.createElement("select");
    choose.id = `disk-box-choice-${drive}`;
    const chooseLabel = document.createElement("label");
    chooseLabel.htmlFor = choose.id;
    chooseLabel.textContent = format(_("Disk for %(drive)s"), { drive: driveName(drive) });
    for (const disk of disks.filter((candidate) => fits(drive, candidate))) {
      const option = document.createElement("option");
      option.value = String(disk.id);
      option.textContent = disk.write_protected ? format(_("%(label)s (write-protected)"), { label: disk.label })
        : disk.label;
      choose.append(option);
    }
    const putIn = document.createElement("button");
    putIn.type = "button";
    putIn.className = "disk-box-put";
    putIn.textContent = drive === "cd" ? _("Put in the CD drive")
      : format(_("Put in %(letter)s:"), { letter: drive.toUpperCase() });
    putIn.disabled = choose.options.length === 0;
    putIn.addEventListener("click", () => {
      const chosen = disks.find((disk) => String(disk.id) === choose.value);
      if (chosen) change(drive, chosen.id);
    });
    const eject = document.createElement("button");
    eject.type = "button";
    eject.className = "disk-box-eject";
    eject.textContent = _("Eject");
    eject.setAttribute("aria-label", format(_("Eject the disk from %(drive)s"), { drive: driveName(drive) }));
    eject.addEventListener("click", () => change(drive, null));
    const controls = document.createElement("div");
    controls.className = "disk-box-controls";
    controls.append(chooseLabel, choose, putIn, eject);
    fieldset.append(legend, inside, controls);
    return fieldset;
  }

  function show() {
    root.hidden = drives.length === 0;
    build();
    summary.textContent = drives.map((entry) => `${driveName(entry.drive)} ${held(entry)}`).join(" · ");
    for (const entry of drives) {
      const fieldset = container.querySelector(`[data-drive="${entry.drive}"]`);
      if (!fieldset) continue;
      fieldset.querySelector(".disk-box-held").textContent = format(_("In it: %(disk)s"), { disk: held(entry) });
      fieldset.querySelector(".disk-box-eject").disabled = entry.disk === null;
    }
  }

  function announce(before) {
    for (const entry of drives) {
      const was = before.find((old) => old.drive === entry.drive);
      if (!was || was.disk === entry.disk) continue;
      status.textContent = entry.disk === null
        ? format(_("%(drive)s is empty."), { drive: driveName(entry.drive) })
        : format(_("%(disk)s is in %(drive)s."), { disk: label(entry.disk), drive: driveName(entry.drive) });
    }
  }

  async function load() {
    const { status: code, data } = await api("GET", path);
    if (code !== 200 || !data) return;
    disks = data.disks || [];
    drives = data.drives || [];
    show();
  }

  async function change(drive, diskId) {
    status.textContent = _("Changing the disk…");
    const { status: code, data } = await api("PUT", `${path}/${drive}`, { disk: diskId });
    if (code !== 200 || !data) {
      status.textContent = (data && data.detail) || _("The disk could not be changed.");
      return;
    }
    const before = drives;
    disks = data.disks || disks;
    drives = data.drives || drives;
    show();
    announce(before);
  }

  window.addEventListener("portal:event", (event) => {
    const data = event.detail || {};
    if (data.type === "drives" && Array.isArray(data.drives)) {
      const before = drives;
      drives = data.drives;
      // A disk of files brought in meanwhile is new to this tab: ask for the whole box.
      if (drives.some((entry) => entry.disk !== null && !disks.some((disk) => disk.id === entry.disk))) {
        load();
        return;
      }
      show();
      announce(before);
    }
    if (data.type === "state" && data.state === "running") load();
  });

  load().catch(() => {});
}
