// fiftyone-blip's one App-side operator: shows a run's sidebar groups in the open dataset.
//
// The App reads a dataset's `app_config.sidebar_groups` when it opens the dataset and keeps the groups
// it holds while the dataset stays open (a reload puts new fields in its default groups). After a run,
// the Python operators trigger this one with the groups fiftyone-blip keeps (`fiftyone_blip.app_config`):
// their fields move there from wherever the App holds them, groups of ours that the dataset no longer
// has go, and every other group stays as the user arranged it.
(function () {
  var foo = window.__foo__;
  var fos = window.__fos__;
  if (!foo || !fos || !fos.sidebarGroupsDefinition) {
    return; // an App without these: the groups show when the dataset is opened again
  }

  function arranged(current, ours, names) {
    var moved = {};
    ours.forEach(function (group) {
      group.paths.forEach(function (path) {
        moved[path] = true;
      });
    });
    var wanted = {};
    ours.forEach(function (group) {
      wanted[group.name] = group;
    });
    var groups = current
      .filter(function (group) {
        return names.indexOf(group.name) < 0 || wanted[group.name];
      })
      .map(function (group) {
        var mine = wanted[group.name];
        var paths = group.paths.filter(function (path) {
          return !moved[path];
        });
        return Object.assign({}, group, { paths: mine ? mine.paths.slice() : paths });
      });
    ours.forEach(function (group) {
      if (groups.some(function (g) { return g.name === group.name; })) {
        return;
      }
      var at = groups.findIndex(function (g) { return g.name === group.before; });
      var entry = { name: group.name, paths: group.paths.slice(), expanded: group.expanded };
      groups.splice(at < 0 ? groups.length : at, 0, entry);
    });
    return groups;
  }

  class ShowSidebarGroups extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({
        name: "show_sidebar_groups",
        label: "BLIP: show the sidebar groups of runs",
        unlisted: true,
      });
    }

    async execute(ctx) {
      var atom = fos.sidebarGroupsDefinition(false);
      var params = ctx.params || {};
      ctx.state.set(atom, function (current) {
        return arranged(current || [], params.groups || [], params.names || []);
      });
    }
  }

  foo.registerOperator(ShowSidebarGroups, "@fiftyone-blip/blip");
})();
