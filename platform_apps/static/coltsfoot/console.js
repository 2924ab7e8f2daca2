// The Coltsfoot console: a deployment's log opens at its end, where the error is.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-cf-log]").forEach(function (box) {
        box.scrollTop = box.scrollHeight;
    });
});
