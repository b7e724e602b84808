// The admin's image upload with a progress bar: the same form, sent with XHR so
// that upload.onprogress can report how much has gone; the server's answer
// (where the new image's page is, or the form with the reason it was refused)
// replaces the page.
"use strict";
(function () {
  const form = document.getElementById("upload-form");
  if (!form || !window.XMLHttpRequest) return;
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  form.addEventListener("submit", function (event) {
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) return;
    event.preventDefault();
    if (file.size > Number(form.dataset.maxBytes)) {
      status.textContent = "This file is larger than the limit; it would be refused.";
      return;
    }
    const request = new XMLHttpRequest();
    request.open("POST", form.action || window.location.href);
    request.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    bar.hidden = false;
    request.upload.onprogress = function (progress) {
      if (progress.lengthComputable) {
        bar.value = Math.round((progress.loaded / progress.total) * 100);
        status.textContent = bar.value + " % sent";
      }
    };
    request.upload.onload = function () { status.textContent = "Sent; checking the image…"; };
    request.onload = function () {
      const type = request.getResponseHeader("Content-Type") || "";
      if (type.startsWith("application/json")) {
        window.location.assign(JSON.parse(request.responseText).location);
      } else {
        document.open();
        document.write(request.responseText);
        document.close();
      }
    };
    request.onerror = function () { status.textContent = "The upload failed; try again."; };
    request.send(new FormData(form));
    form.querySelector("input[type=submit]").disabled = true;
  });
})();
